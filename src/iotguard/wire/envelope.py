"""Telemetry envelope, wire format v1 (see ``docs/wire.md``).

The envelope is one deterministic CBOR array of six items::

    [version=1, suite_id, device_id, epoch, seq, ciphertext]

Everything before ``ciphertext`` is the *header*; the AEAD associated data is
the header bytes followed by the topic (see :func:`associated_data`). The
decoder accepts exactly the deterministic (shortest-form) encoding, nothing
else: no indefinite lengths, no tags, no trailing bytes, size-limited.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from iotguard.errors import MalformedError

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_DEVICE_ID_LENGTH",
    "Envelope",
    "associated_data",
    "decode_envelope",
    "encode_envelope",
    "encode_header",
]

ENVELOPE_VERSION = 1
MAX_DEVICE_ID_LENGTH = 64
_DEVICE_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_EPOCH = 2**32 - 1
#: Sequence numbers fit a signed 64-bit database column (readings.seq,
#: replay_windows.top); a larger one would fail at storage and stall the batch
#: it arrived in, so it is refused here, before any decryption.
_MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded envelope. ``header`` is the exact bytes the AAD is built from."""

    suite_id: int
    device_id: str
    epoch: int
    seq: int
    ciphertext: bytes
    header: bytes


def _head(major: int, value: int) -> bytes:
    """Shortest CBOR head for ``major`` type with argument ``value``."""
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value < 0x100:
        return bytes((mt | 24, value))
    if value < 0x10000:
        return bytes((mt | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((mt | 26,)) + value.to_bytes(4, "big")
    return bytes((mt | 27,)) + value.to_bytes(8, "big")


def encode_header(suite_id: int, device_id: str, epoch: int, seq: int) -> bytes:
    """Encode the envelope header (array head plus the first five items).

    Raises:
        MalformedError: a field is out of range.
    """
    did = device_id.encode("ascii", "strict") if device_id.isascii() else b""
    if not _DEVICE_ID.fullmatch(did):
        raise MalformedError("device id must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
    if not 0 <= suite_id <= 255 or not 0 <= epoch <= _MAX_EPOCH or not 0 <= seq <= _MAX_SEQ:
        raise MalformedError("suite, epoch or sequence out of range")
    return b"".join(
        (
            b"\x86",
            _head(0, ENVELOPE_VERSION),
            _head(0, suite_id),
            _head(3, len(did)),
            did,
            _head(0, epoch),
            _head(0, seq),
        )
    )


def encode_envelope(suite_id: int, device_id: str, epoch: int, seq: int, ciphertext: bytes) -> bytes:
    """Encode a whole envelope."""
    return encode_header(suite_id, device_id, epoch, seq) + _head(2, len(ciphertext)) + ciphertext


def associated_data(header: bytes, topic: str) -> bytes:
    """AEAD associated data: header bytes || u16 big-endian topic length || topic (UTF-8)."""
    t = topic.encode("utf-8")
    return header + struct.pack(">H", len(t)) + t


def _uint(buf: bytes, pos: int, major: int, what: str) -> tuple[int, int]:
    """Read one shortest-form CBOR head of ``major`` type at ``pos``; returns (argument, next position)."""
    if pos >= len(buf):
        raise MalformedError(f"truncated before {what}")
    ib = buf[pos]
    if ib >> 5 != major:
        raise MalformedError(f"{what}: wrong CBOR type")
    info = ib & 0x1F
    if info < 24:
        return info, pos + 1
    if info > 27:
        raise MalformedError(f"{what}: indefinite or reserved length")
    n = 1 << (info - 24)
    end = pos + 1 + n
    if end > len(buf):
        raise MalformedError(f"truncated in {what}")
    value = int.from_bytes(buf[pos + 1 : end], "big")
    # Deterministic encoding: the argument must use the shortest form.
    if value < (24 if n == 1 else 1 << (4 * n)):
        raise MalformedError(f"{what}: non-shortest integer encoding")
    return value, end


# Device ids already validated (bounded): the regular expression is the
# costliest step of decoding and a fleet sends the same ids again and again.
_KNOWN_IDS: dict[bytes, str] = {}
_KNOWN_IDS_MAX = 100_000


def decode_envelope(data: bytes, *, max_size: int = 16384, tag_size: int = 16) -> Envelope:
    """Strictly decode an envelope.

    Args:
        data: Untrusted bytes from the network.
        max_size: Reject anything larger before parsing.
        tag_size: Minimum ciphertext length (an AEAD tag).

    Raises:
        MalformedError: anything but one well-formed v1 envelope within limits.
    """
    if len(data) > max_size:
        raise MalformedError(f"envelope of {len(data)} bytes exceeds the {max_size}-byte limit")
    buf = bytes(data)
    if len(buf) < 2 or buf[0] != 0x86:
        raise MalformedError("not a 6-item CBOR array")
    if buf[1] != ENVELOPE_VERSION:
        raise MalformedError("unsupported envelope version")
    suite_id, pos = _uint(buf, 2, 0, "suite")
    if suite_id > 255:
        raise MalformedError("suite id out of range")
    did_len, pos = _uint(buf, pos, 3, "device id")
    if did_len > MAX_DEVICE_ID_LENGTH:
        raise MalformedError("device id too long")
    end = pos + did_len
    if end > len(buf):
        raise MalformedError("truncated in device id")
    did = buf[pos:end]
    device_id = _KNOWN_IDS.get(did)
    if device_id is None:
        if not _DEVICE_ID.fullmatch(did):
            raise MalformedError("device id has forbidden characters")
        device_id = did.decode("ascii")
        if len(_KNOWN_IDS) < _KNOWN_IDS_MAX:
            _KNOWN_IDS[did] = device_id
    epoch, pos = _uint(buf, end, 0, "epoch")
    if epoch > _MAX_EPOCH:
        raise MalformedError("epoch out of range")
    seq, pos = _uint(buf, pos, 0, "sequence")
    if seq > _MAX_SEQ:
        raise MalformedError("sequence out of range")
    header = buf[:pos]
    ct_len, pos = _uint(buf, pos, 2, "ciphertext")
    if ct_len < tag_size:
        raise MalformedError("ciphertext shorter than a tag")
    if pos + ct_len != len(buf):
        raise MalformedError("truncated ciphertext" if pos + ct_len > len(buf) else "trailing bytes after envelope")
    return Envelope(suite_id, device_id, epoch, seq, buf[pos:], header)
