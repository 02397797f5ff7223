"""Ascon-Hash256, Ascon-XOF128 and Ascon-CXOF128 (NIST SP 800-232, section 5).

Scalar form for devices. All three absorb 8-byte little-endian blocks with
Ascon-p[12] after each block, the last block padded with ``0x01`` then
zeros, and squeeze 8 bytes per Ascon-p[12]. They differ only in the initial
value, the output length and, for CXOF128, the customization string
absorbed before the message (its bit length as one word, then the string
padded like a message).
"""

from __future__ import annotations

import struct

from iotguard.crypto.ascon._parameters import (
    CXOF128_IV,
    HASH256_IV,
    HASH_RATE,
    MAX_CUSTOMIZATION_SIZE,
    MAX_XOF_OUTPUT,
    XOF128_IV,
)
from iotguard.crypto.ascon._permutation import p12
from iotguard.errors import ConfigError, MalformedError

__all__ = ["cxof128", "hash256", "xof128"]

#: Digest size of Ascon-Hash256 in bytes.
HASH256_SIZE = 32

State = tuple[int, int, int, int, int]


def _initial_state(iv: int) -> State:
    return p12(iv, 0, 0, 0, 0)


# The initial states do not depend on the input; compute them once.
_HASH256_START = _initial_state(HASH256_IV)
_XOF128_START = _initial_state(XOF128_IV)
_CXOF128_START = _initial_state(CXOF128_IV)


def _absorb(state: State, message: bytes) -> State:
    x0, x1, x2, x3, x4 = state
    full = len(message) - len(message) % HASH_RATE
    if full:
        for (word,) in struct.iter_unpack("<Q", message[:full]):
            x0, x1, x2, x3, x4 = p12(x0 ^ word, x1, x2, x3, x4)
    rest = len(message) - full
    last = int.from_bytes(message[full:], "little") ^ (1 << (8 * rest))
    return p12(x0 ^ last, x1, x2, x3, x4)


def _squeeze(state: State, length: int) -> bytes:
    x0, x1, x2, x3, x4 = state
    words = [x0]
    for _ in range((length + HASH_RATE - 1) // HASH_RATE - 1):
        x0, x1, x2, x3, x4 = p12(x0, x1, x2, x3, x4)
        words.append(x0)
    return struct.pack(f"<{len(words)}Q", *words)[:length]


def check_output_length(length: int) -> None:
    """Check an XOF output length against :data:`MAX_XOF_OUTPUT`.

    Raises:
        ConfigError: the length is negative or above the limit.
    """
    if not 0 <= length <= MAX_XOF_OUTPUT:
        raise ConfigError(f"ascon xof: output length must be 0..{MAX_XOF_OUTPUT} bytes, not {length}")


def check_customization(customization: bytes) -> None:
    """Check a CXOF128 customization string against SP 800-232's 2048-bit bound.

    Raises:
        MalformedError: the string is longer than 256 bytes.
    """
    if len(customization) > MAX_CUSTOMIZATION_SIZE:
        raise MalformedError(f"ascon-cxof128: customization must be at most {MAX_CUSTOMIZATION_SIZE} bytes")


def hash256(message: bytes) -> bytes:
    """Return the 32-byte Ascon-Hash256 digest of ``message``."""
    return _squeeze(_absorb(_HASH256_START, message), HASH256_SIZE)


def xof128(message: bytes, length: int) -> bytes:
    """Return ``length`` bytes of Ascon-XOF128 output for ``message``.

    Raises:
        ConfigError: ``length`` is negative or above :data:`MAX_XOF_OUTPUT`.
    """
    check_output_length(length)
    if length == 0:
        return b""
    return _squeeze(_absorb(_XOF128_START, message), length)


def cxof128(message: bytes, length: int, customization: bytes = b"") -> bytes:
    """Return ``length`` bytes of Ascon-CXOF128 output for ``message``.

    Args:
        message: Input bytes.
        length: Output length in bytes.
        customization: Domain string, at most 256 bytes (2048 bits).

    Raises:
        ConfigError: ``length`` is negative or above :data:`MAX_XOF_OUTPUT`.
        MalformedError: ``customization`` is longer than 256 bytes.
    """
    check_output_length(length)
    check_customization(customization)
    if length == 0:
        return b""
    x0, x1, x2, x3, x4 = _CXOF128_START
    state = p12(x0 ^ (8 * len(customization)), x1, x2, x3, x4)
    state = _absorb(state, customization)
    return _squeeze(_absorb(state, message), length)
