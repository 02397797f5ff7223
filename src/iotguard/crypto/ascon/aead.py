"""Ascon-AEAD128 (NIST SP 800-232, section 4), scalar form for devices.

Words are read from bytes little-endian, as SP 800-232 specifies (this is
the main difference from Ascon v1.2 besides the initial values).
"""

from __future__ import annotations

import hmac
import struct

from iotguard.crypto.ascon._parameters import (
    AEAD128_IV,
    AEAD_RATE,
    DOMAIN_SEPARATION,
    KEY_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
)
from iotguard.crypto.ascon._permutation import WORD_MASK, p8, p12
from iotguard.errors import IntegrityError

__all__ = ["aead_decrypt", "aead_encrypt"]

_TWO_WORDS = struct.Struct("<2Q")
_ZERO_BLOCK = bytes(AEAD_RATE)

State = tuple[int, int, int, int, int]


def _byte_mask(count: int) -> int:
    """Mask covering the first ``count`` bytes of a little-endian word (0..8)."""
    return (1 << (8 * count)) - 1


def _split_pad(count: int) -> tuple[int, int, int, int]:
    """Byte masks and padding words for a final block of ``count`` bytes (0..15).

    Returns ``(mask0, mask1, pad0, pad1)``: masks select the ``count`` data
    bytes over the two rate words, the pad words carry the ``0x01`` padding
    byte that SP 800-232 appends right after the data.
    """
    if count < 8:
        return _byte_mask(count), 0, 1 << (8 * count), 0
    return WORD_MASK, _byte_mask(count - 8), 0, 1 << (8 * (count - 8))


def _start(key: bytes, nonce: bytes, associated_data: bytes) -> tuple[int, int, int, int, int, int, int]:
    """Check sizes, initialize and absorb the associated data.

    Returns the state words after domain separation, then the key words.
    """
    if len(key) != KEY_SIZE:
        raise IntegrityError(f"ascon-aead128: key must be {KEY_SIZE} bytes")
    if len(nonce) != NONCE_SIZE:
        raise IntegrityError(f"ascon-aead128: nonce must be {NONCE_SIZE} bytes")
    k0, k1 = _TWO_WORDS.unpack(key)
    n0, n1 = _TWO_WORDS.unpack(nonce)
    x0, x1, x2, x3, x4 = p12(AEAD128_IV, k0, k1, n0, n1)
    x3 ^= k0
    x4 ^= k1
    if associated_data:
        full = len(associated_data) - len(associated_data) % AEAD_RATE
        if full:
            for a0, a1 in struct.iter_unpack("<2Q", associated_data[:full]):
                x0, x1, x2, x3, x4 = p8(x0 ^ a0, x1 ^ a1, x2, x3, x4)
        rest = len(associated_data) - full
        a0, a1 = _TWO_WORDS.unpack(associated_data[full:] + _ZERO_BLOCK[rest:])
        _, _, pad0, pad1 = _split_pad(rest)
        x0, x1, x2, x3, x4 = p8(x0 ^ a0 ^ pad0, x1 ^ a1 ^ pad1, x2, x3, x4)
    return x0, x1, x2, x3, x4 ^ DOMAIN_SEPARATION, k0, k1


def aead_encrypt(key: bytes, nonce: bytes, associated_data: bytes, plaintext: bytes) -> bytes:
    """Encrypt and authenticate with Ascon-AEAD128.

    Args:
        key: 16-byte secret key.
        nonce: 16-byte nonce; never reuse one under the same key.
        associated_data: Bytes authenticated but not encrypted.
        plaintext: Bytes to encrypt.

    Returns:
        The ciphertext (as long as the plaintext) followed by the 16-byte tag.

    Raises:
        IntegrityError: the key or nonce has the wrong length.
    """
    x0, x1, x2, x3, x4, k0, k1 = _start(key, nonce, associated_data)
    full = len(plaintext) - len(plaintext) % AEAD_RATE
    out: list[int] = []
    if full:
        for m0, m1 in struct.iter_unpack("<2Q", plaintext[:full]):
            x0 ^= m0
            x1 ^= m1
            out += (x0, x1)
            x0, x1, x2, x3, x4 = p8(x0, x1, x2, x3, x4)
    rest = len(plaintext) - full
    last = b""
    if rest:
        m0, m1 = _TWO_WORDS.unpack(plaintext[full:] + _ZERO_BLOCK[rest:])
        x0 ^= m0
        x1 ^= m1
        last = _TWO_WORDS.pack(x0, x1)[:rest]
    _, _, pad0, pad1 = _split_pad(rest)
    x0, x1, x2, x3, x4 = p12(x0 ^ pad0, x1 ^ pad1, x2 ^ k0, x3 ^ k1, x4)
    return struct.pack(f"<{len(out)}Q", *out) + last + _TWO_WORDS.pack(x3 ^ k0, x4 ^ k1)


def aead_decrypt(key: bytes, nonce: bytes, associated_data: bytes, ciphertext: bytes) -> bytes:
    """Verify and decrypt an Ascon-AEAD128 ciphertext.

    The tag is compared in constant time and no plaintext is returned unless
    it verifies.

    Args:
        key: 16-byte secret key.
        nonce: 16-byte nonce used to encrypt.
        associated_data: The associated data given to :func:`aead_encrypt`.
        ciphertext: Ciphertext followed by the 16-byte tag.

    Returns:
        The plaintext.

    Raises:
        IntegrityError: the tag does not verify, or the key, nonce or
            ciphertext has an impossible length.
    """
    body_len = len(ciphertext) - TAG_SIZE
    if body_len < 0:
        raise IntegrityError("ascon-aead128: ciphertext shorter than the tag")
    x0, x1, x2, x3, x4, k0, k1 = _start(key, nonce, associated_data)
    full = body_len - body_len % AEAD_RATE
    out: list[int] = []
    if full:
        for c0, c1 in struct.iter_unpack("<2Q", ciphertext[:full]):
            out += (x0 ^ c0, x1 ^ c1)
            x0, x1, x2, x3, x4 = p8(c0, c1, x2, x3, x4)
    rest = body_len - full
    mask0, mask1, pad0, pad1 = _split_pad(rest)
    last = b""
    if rest:
        c0, c1 = _TWO_WORDS.unpack(ciphertext[full:body_len] + _ZERO_BLOCK[rest:])
        m0 = (x0 ^ c0) & mask0
        m1 = (x1 ^ c1) & mask1
        x0 ^= m0
        x1 ^= m1
        last = _TWO_WORDS.pack(m0, m1)[:rest]
    x0, x1, x2, x3, x4 = p12(x0 ^ pad0, x1 ^ pad1, x2 ^ k0, x3 ^ k1, x4)
    if not hmac.compare_digest(_TWO_WORDS.pack(x3 ^ k0, x4 ^ k1), ciphertext[body_len:]):
        raise IntegrityError("ascon-aead128: tag mismatch")
    return struct.pack(f"<{len(out)}Q", *out) + last
