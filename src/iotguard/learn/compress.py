"""Update compression: top-k sparsification with error feedback and 8-bit quantisation.

A device's model update is encoded by :class:`UpdateEncoder` (which keeps
the error-feedback residual of Stich et al., "Sparsified SGD with Memory",
NeurIPS 2018: what top-k and rounding left out is added to the next
update) and decoded by the hub with :func:`decode_update`, which parses the
untrusted bytes strictly. The scheme is negotiated per round and device: the
round offers schemes in the run's order of preference, the device says which
it can send and how many bytes an update may take, and the hub picks the
first offered scheme that fits (:func:`negotiate`); an update is accepted in
any scheme the round offered (:func:`check_compression`), so the hub keeps no
per-device state for it. The bytes counted are the encoded bytes.

Wire form (little-endian)::

    magic "IGU1" | scheme u8 | dims u32 | count u32 | scale f32 | indices | values

``scheme``: 0 dense float32 (``count == dims``, no indices, ``scale`` 1);
1 dense int8 (``count == dims``); 2 top-k float32; 3 top-k int8. Indices
(top-k only) are ``count`` strictly increasing u32 below ``dims``; int8
values are ``round(v / scale)`` in ``[-127, 127]`` with stochastic rounding
(unbiased).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError, MalformedError, PolicyDenied

__all__ = ["MAX_UPDATE_DIMS", "SCHEMES", "Compression", "UpdateEncoder", "check_compression", "decode_update",
           "encoded_size", "negotiate", "parse_schedule"]

Array = npt.NDArray[np.float64]

MAGIC = b"IGU1"
#: Largest update (coordinates) the hub decodes.
MAX_UPDATE_DIMS = 1 << 20
SCHEMES = {"none": 0, "q8": 1, "topk": 2, "topk+q8": 3}
_HEADER = struct.Struct("<4sBIIf")


@dataclass(frozen=True)
class Compression:
    """A round's negotiated compression.

    Attributes:
        scheme: One of :data:`SCHEMES`.
        topk_fraction: Fraction of coordinates kept by the top-k schemes.
    """

    scheme: str = "none"
    topk_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES or not 0.0 < self.topk_fraction <= 1.0:
            raise ConfigError(f"compression scheme must be one of {sorted(SCHEMES)}, 0 < fraction <= 1")

    def kept(self, dims: int) -> int:
        """Coordinates an update of ``dims`` carries under this scheme (top-k: ``k``)."""
        return dims if SCHEMES[self.scheme] in (0, 1) else max(1, round(self.topk_fraction * dims))


def encoded_size(compression: Compression, dims: int) -> int:
    """Bytes of an update of ``dims`` coordinates encoded under ``compression`` (the wire form is fixed-size)."""
    scheme, k = SCHEMES[compression.scheme], compression.kept(dims)
    return _HEADER.size + (4 * dims, dims, 8 * k, 5 * k)[scheme]


def _quantise(values: Array, rng: np.random.Generator) -> tuple[npt.NDArray[np.int8], float]:
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    scale = (float(np.float32(peak / 127.0)) or 1.0) if peak > 0 else 1.0
    scaled = values / scale
    low = np.floor(scaled)
    q = low + (rng.random(values.shape) < (scaled - low))
    return np.clip(q, -127, 127).astype(np.int8), scale


class UpdateEncoder:
    """Device side: encodes successive updates of one model, carrying the error-feedback residual.

    Args:
        dims: Update length.
        seed: Seed of the stochastic-rounding generator.
    """

    def __init__(self, dims: int, seed: int = 0) -> None:
        if not 1 <= dims <= MAX_UPDATE_DIMS:
            raise ConfigError("update dims out of range")
        self.dims = dims
        self._residual = np.zeros(dims)
        self._rng = np.random.default_rng(seed)

    def encode(self, update: Array, compression: Compression) -> bytes:
        """Wire bytes of ``update`` (plus the carried residual) under ``compression``."""
        if update.shape != (self.dims,):
            raise ConfigError("update has the wrong length")
        scheme = SCHEMES[compression.scheme]
        v = update + self._residual
        if scheme in (0, 1):
            idx = np.arange(self.dims, dtype=np.uint32)
            kept = v
        else:
            k = compression.kept(self.dims)
            idx = np.sort(np.argpartition(np.abs(v), self.dims - k)[self.dims - k:]).astype(np.uint32)
            kept = v[idx]
        if scheme in (1, 3):
            q, scale = _quantise(kept, self._rng)
            sent = q.astype(np.float64) * scale
            body = q.tobytes()
        else:
            scale = 1.0
            sent = kept.astype(np.float32).astype(np.float64)
            body = kept.astype("<f4").tobytes()
        sent_full = np.zeros(self.dims)
        sent_full[idx] = sent
        self._residual = v - sent_full
        header = _HEADER.pack(MAGIC, scheme, self.dims, len(idx), scale)
        return header + (idx.astype("<u4").tobytes() if scheme in (2, 3) else b"") + body


def parse_schedule(text: str, topk_fraction: float) -> tuple[tuple[Compression, ...], ...]:
    """A run's compression schedule: what each round offers, in order of preference.

    ``"topk+q8"`` offers top-k 8-bit in every round; ``"q8,topk+q8"`` alternates (round ``v`` uses entry
    ``v mod n``); ``"topk+q8|q8|none"`` offers top-k 8-bit to devices that can send it, 8-bit to those that
    cannot, float32 to the rest.

    Raises:
        ConfigError: an unknown or repeated scheme, an empty entry, more than 64 entries.
    """
    entries = text.split(",")
    if not 1 <= len(entries) <= 64:
        raise ConfigError("a compression schedule has 1 to 64 entries")
    schedule = []
    for entry in entries:
        names = [n.strip() for n in entry.split("|")]
        if len(set(names)) != len(names):
            raise ConfigError(f"compression offer {entry!r} repeats a scheme")
        schedule.append(tuple(Compression(n, topk_fraction) for n in names))
    return tuple(schedule)


def negotiate(offer: Sequence[Compression], dims: int, accepts: Collection[str] | None = None,
              max_update_bytes: int = 0) -> Compression:
    """The compression a device sends this round: the first of ``offer`` it ``accepts`` (``None``: all) whose
    update fits in ``max_update_bytes`` (0: any size).

    Raises:
        PolicyDenied: ``compression_unsupported``: no offered scheme suits the device.
    """
    for c in offer:
        if (accepts is None or c.scheme in accepts) and (not max_update_bytes
                                                         or encoded_size(c, dims) <= max_update_bytes):
            return c
    raise PolicyDenied(f"this round offers {'|'.join(c.scheme for c in offer)}; the device accepts "
                       f"{'|'.join(sorted(accepts)) if accepts is not None else 'any'} up to "
                       f"{max_update_bytes or 'any'} bytes", code="compression_unsupported")


def check_compression(data: bytes, dims: int, offer: Sequence[Compression]) -> None:
    """Refuse an update not encoded as its round offered: a scheme outside the offer, or top-k keeping more
    than the offer's ``k``.

    Call after :func:`decode_update` accepted ``data`` (the header is then known to be well formed).

    Raises:
        MalformedError: ``compression_mismatch``.
    """
    _magic, scheme, _n, count, _scale = _HEADER.unpack_from(data)
    match = [c for c in offer if SCHEMES[c.scheme] == scheme]
    if not match:
        raise MalformedError(f"update uses scheme {scheme}, the round offered "
                             f"{'|'.join(c.scheme for c in offer)}", code="compression_mismatch")
    if scheme in (2, 3) and count > match[0].kept(dims):
        raise MalformedError("update keeps more coordinates than the round's top-k", code="compression_mismatch")


def decode_update(data: bytes, dims: int) -> Array:
    """The dense update carried by ``data``, which must have exactly ``dims`` coordinates.

    Raises:
        MalformedError: ``update_malformed`` (size, magic, scheme, count, indices,
            scale or values wrong) or ``update_dims`` (wrong model size).
    """
    if len(data) < _HEADER.size or len(data) > _HEADER.size + 8 * MAX_UPDATE_DIMS:
        raise MalformedError("update size out of range", code="update_malformed")
    magic, scheme, n, count, scale = _HEADER.unpack_from(data)
    if magic != MAGIC or scheme > 3:
        raise MalformedError("bad magic or scheme", code="update_malformed")
    if n != dims:
        raise MalformedError(f"update has {n} coordinates, model has {dims}", code="update_dims")
    dense = scheme in (0, 1)
    if (dense and count != n) or not 1 <= count <= n:
        raise MalformedError("bad coordinate count", code="update_malformed")
    width = 1 if scheme in (1, 3) else 4
    expect = _HEADER.size + (0 if dense else 4 * count) + width * count
    if len(data) != expect:
        raise MalformedError("length does not match header", code="update_malformed")
    if not (np.isfinite(scale) and scale > 0):
        raise MalformedError("bad scale", code="update_malformed")
    at = _HEADER.size
    if dense:
        idx = np.arange(n)
    else:
        idx = np.frombuffer(data, dtype="<u4", count=count, offset=at).astype(np.int64)
        at += 4 * count
        if idx[-1] >= n or (count > 1 and np.any(np.diff(idx) <= 0)):
            raise MalformedError("indices not strictly increasing below dims", code="update_malformed")
    if width == 1:
        q = np.frombuffer(data, dtype=np.int8, count=count, offset=at)
        if np.any(q == -128):
            raise MalformedError("int8 value out of range", code="update_malformed")
        values = q.astype(np.float64) * float(scale)
    else:
        values = np.frombuffer(data, dtype="<f4", count=count, offset=at).astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise MalformedError("values not finite", code="update_malformed")
    out = np.zeros(n)
    out[idx] = values
    return out
