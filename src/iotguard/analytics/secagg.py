"""Secure aggregation (Bonawitz et al., CCS 2017): the hub learns only the sum.

Vectors are integers modulo ``2^32`` (callers quantise). Each device ``u``:

* has an X25519 mask key pair and a random 32-byte self-mask seed ``b_u``;
* Shamir-shares its X25519 private key and ``b_u`` (threshold ``t``) among
  the round's devices (:func:`split` / :func:`combine` over the prime field
  ``2^521 - 1``);
* sends ``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)``
  where ``s_uv`` is the X25519 agreement of ``u`` and ``v`` (HKDF-SHA256) and
  PRG is ChaCha20 keystream.

The aggregator adds the masked vectors of the devices that sent one. For a
device ``v`` that dropped out it collects ``t`` shares of ``v``'s private key
from survivors and recomputes ``v``'s pairwise masks with every survivor;
for every survivor it collects ``t`` shares of ``b_u`` and removes the self
mask. A device answers for each peer with one kind of share only (key of a
dropped peer, seed of a surviving one), so the aggregator never holds both
secrets of one device. Shares are checked strictly: wrong owner, holder,
index or range, duplicates and shares inconsistent with the others (more
than ``t`` given and not on one polynomial) are rejected with a reason.
This module does no I/O; the messages travel over the authenticated device
channel.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from iotguard.errors import ConfigError, MalformedError

__all__ = ["PRIME", "AggregationError", "Aggregator", "Device", "Share", "combine", "prg", "split"]

#: Field of the Shamir shares (a Mersenne prime above every 32-byte secret).
PRIME = (1 << 521) - 1
MAX_DIMS = 1 << 24
Vector = npt.NDArray[np.uint32]


class AggregationError(MalformedError):
    """A share or message was rejected; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Share:
    """Share ``index`` (x-coordinate, ``holder + 1``) of a secret of ``owner``, held by ``holder``."""

    owner: int
    holder: int
    kind: str  # "key" (X25519 private key) or "seed" (self-mask seed)
    y: int


def split(secret: bytes, n: int, t: int) -> list[int]:
    """Shamir shares ``f(1), ..., f(n)`` of ``secret`` with threshold ``t``."""
    if not 1 <= t <= n:
        raise ConfigError("threshold must be 1..n")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    out = []
    for x in range(1, n + 1):
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        out.append(acc)
    return out


def _interpolate(points: Sequence[tuple[int, int]], at: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(points: Sequence[tuple[int, int]], t: int, size: int = 32) -> bytes:
    """Reconstruct a secret from ``(x, y)`` points; every point beyond ``t`` must agree.

    Raises:
        AggregationError: ``too_few_shares``, ``share_inconsistent``, ``share_out_of_range``.
    """
    if len(points) < t:
        raise AggregationError("too_few_shares", f"{len(points)} of {t}")
    base = list(points[:t])
    for x, y in points[t:]:
        if _interpolate(base, x) != y:
            raise AggregationError("share_inconsistent", f"share at x={x} is not on the polynomial")
    secret = _interpolate(base, 0)
    if secret >= 1 << (8 * size):
        raise AggregationError("share_out_of_range", "reconstructed secret is too large")
    return secret.to_bytes(size, "big")


def prg(seed: bytes, dims: int) -> Vector:
    """``dims`` uniform words modulo ``2^32`` from ChaCha20 keyed by ``seed``."""
    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\0" * (4 * dims)), dtype="<u4").astype(np.uint32)


def _agree(sk: X25519PrivateKey, pk: bytes, lo: int, hi: int) -> bytes:
    shared = sk.exchange(X25519PublicKey.from_public_bytes(pk))
    info = b"iotguard-secagg-pair|" + lo.to_bytes(4, "big") + hi.to_bytes(4, "big")
    return HKDF(hashes.SHA256(), 32, None, info).derive(shared)


def _pair_mask(u: int, v: int, seed: bytes, dims: int) -> Vector:
    """``+PRG`` for the lower index, ``-PRG`` for the higher."""
    m = prg(seed, dims)
    return m if u < v else (np.uint32(0) - m).astype(np.uint32)


class Device:
    """One participant: its value, its keys, its shares of the others' secrets."""

    def __init__(self, index: int, value: Vector) -> None:
        self.index = index
        self._value = np.asarray(value, dtype=np.uint32)
        self._sk = X25519PrivateKey.generate()
        self.public_key = self._sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._seed = secrets.token_bytes(32)
        self._held: dict[tuple[int, str], int] = {}
        self._revealed: dict[int, str] = {}

    def shares_for_peers(self, n: int, t: int) -> list[Share]:
        """Round 1: shares of this device's key and seed, one of each per device (to send over the channel)."""
        sk = self._sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        keys, seeds = split(sk, n, t), split(self._seed, n, t)
        return [Share(self.index, h, kind, ys[h]) for h in range(n) for kind, ys in (("key", keys), ("seed", seeds))]

    def receive_share(self, share: Share) -> None:
        """Keep a peer's share addressed to this device."""
        if share.holder != self.index or share.kind not in ("key", "seed") or not 0 <= share.y < PRIME:
            raise AggregationError("share_malformed", "wrong holder, kind or range")
        self._held[(share.owner, share.kind)] = share.y

    def masked_input(self, public_keys: Mapping[int, bytes]) -> Vector:
        """Round 2: the masked vector (the only form of the value that leaves the device)."""
        dims = len(self._value)
        y = (self._value + prg(self._seed, dims)).astype(np.uint32)
        for v, pk in public_keys.items():
            if v != self.index:
                seed = _agree(self._sk, pk, min(v, self.index), max(v, self.index))
                y = (y + _pair_mask(self.index, v, seed, dims)).astype(np.uint32)
        return y

    def unmask_shares(self, survivors: Sequence[int], dropped: Sequence[int]) -> list[Share]:
        """Round 3: seed shares of survivors, key shares of dropped devices; never both for one device."""
        if set(survivors) & set(dropped):
            raise AggregationError("unmask_request_inconsistent", "a device cannot be both survivor and dropped")
        out = []
        for owner, kind in [*((s, "seed") for s in survivors), *((d, "key") for d in dropped)]:
            if self._revealed.setdefault(owner, kind) != kind:
                raise AggregationError("unmask_request_inconsistent", f"device {owner} asked as both")
            if (owner, kind) in self._held:
                out.append(Share(owner, self.index, kind, self._held[(owner, kind)]))
        return out


class Aggregator:
    """The hub's side: holds public keys, masked vectors and unmasking shares, never a device's value."""

    def __init__(self, n: int, t: int, dims: int) -> None:
        if not (n >= 2 and n // 2 < t <= n and 1 <= dims <= MAX_DIMS):
            raise ConfigError("need n >= 2, n/2 < t <= n and 1 <= dims <= 2^24")
        self.n, self.t, self.dims = n, t, dims
        self.public_keys: dict[int, bytes] = {}
        self.masked: dict[int, Vector] = {}

    def add_public_key(self, index: int, key: bytes) -> None:
        if not 0 <= index < self.n or len(key) != 32 or index in self.public_keys:
            raise AggregationError("public_key_malformed", f"device {index}")
        self.public_keys[index] = bytes(key)

    def add_masked(self, index: int, vector: Vector) -> None:
        if index not in self.public_keys or index in self.masked:
            raise AggregationError("masked_input_unexpected", f"device {index}")
        if not isinstance(vector, np.ndarray) or vector.dtype != np.uint32 or vector.shape != (self.dims,):
            raise AggregationError("masked_input_malformed", f"device {index}")
        self.masked[index] = vector.copy()

    def _points(self, shares: Sequence[Share], owner: int, kind: str, survivors: set[int]) -> list[tuple[int, int]]:
        seen: dict[int, int] = {}
        for s in shares:
            if s.owner != owner or s.kind != kind:
                continue
            if s.holder not in survivors or not 0 <= s.y < PRIME:
                raise AggregationError("share_malformed", f"share of {owner} from {s.holder}")
            if s.holder in seen and seen[s.holder] != s.y:
                raise AggregationError("share_duplicate", f"two shares of {owner} from {s.holder}")
            seen[s.holder] = s.y
        return [(h + 1, y) for h, y in sorted(seen.items())]

    def unmask(self, shares: Sequence[Share]) -> Vector:
        """The exact sum of the survivors' values, from their masked vectors and the unmasking shares.

        Raises:
            AggregationError: too few survivors or shares, or a malformed/inconsistent share.
        """
        survivors = set(self.masked)
        dropped = sorted(set(self.public_keys) - survivors)
        if len(survivors) < self.t:
            raise AggregationError("too_few_survivors", f"{len(survivors)} of threshold {self.t}")
        total = np.zeros(self.dims, dtype=np.uint32)
        for y in self.masked.values():
            total = (total + y).astype(np.uint32)
        for u in sorted(survivors):
            seed = combine(self._points(shares, u, "seed", survivors), self.t)
            total = (total - prg(seed, self.dims)).astype(np.uint32)
        for v in dropped:
            sk = X25519PrivateKey.from_private_bytes(combine(self._points(shares, v, "key", survivors), self.t))
            for u in sorted(survivors):
                seed = _agree(sk, self.public_keys[u], min(u, v), max(u, v))
                # u added _pair_mask(u, v); remove it
                total = (total - _pair_mask(u, v, seed, self.dims)).astype(np.uint32)
        return total
