"""The Ascon permutation on Python integers (NIST SP 800-232, section 3).

The 320-bit state is five 64-bit words ``x0..x4``. SP 800-232 maps bytes to
words little-endian; that mapping happens in the callers, this module only
permutes words.

The rounds are unrolled and written for CPython's speed, not for reading
against the standard (``bench/aead.py`` keeps a literal version):

* The substitution layer uses a 17-operation bitsliced form of the Ascon
  S-box (three temporaries, two complements), equivalent to SP 800-232's
  formula; its outputs land in rotated variables, which the linear layer
  absorbs by reading ``y0..y4`` from ``x2, x3, x4, x0, x1``.
* Each linear-layer word builds ``d = x * (2**64 + 1)`` (the word doubled
  to 128 bits) so that ``rotr(x, n)`` is just ``d >> n`` in the low 64
  bits. Words are not masked to 64 bits between rounds: bits above 63 are
  never shifted down (the doubling masks its input first), so only the
  permutation's outputs are masked.
"""

from __future__ import annotations

__all__ = ["ROUND_CONSTANTS", "WORD_MASK", "p8", "p12"]

#: All-ones 64-bit word.
WORD_MASK = 0xFFFF_FFFF_FFFF_FFFF
_MASK = WORD_MASK
_DOUBLE = (1 << 64) + 1

#: The 12 round constants of Ascon-p[12]; Ascon-p[8] uses the last 8.
ROUND_CONSTANTS = (0xF0, 0xE1, 0xD2, 0xC3, 0xB4, 0xA5, 0x96, 0x87, 0x78, 0x69, 0x5A, 0x4B)

State = tuple[int, int, int, int, int]


def p8(x0: int, x1: int, x2: int, x3: int, x4: int) -> State:
    """Ascon-p[8]: the last 8 rounds of Ascon-p[12]."""
    # Round constant 0xb4.
    x2 ^= 0xB4
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0xa5.
    x2 ^= 0xA5
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0x96.
    x2 ^= 0x96
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0x87.
    x2 ^= 0x87
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0x78.
    x2 ^= 0x78
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0x69.
    x2 ^= 0x69
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0x5a.
    x2 ^= 0x5A
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0x4b.
    x2 ^= 0x4B
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    return x0 & _MASK, x1 & _MASK, x2 & _MASK, x3 & _MASK, x4 & _MASK


def p12(x0: int, x1: int, x2: int, x3: int, x4: int) -> State:
    """Ascon-p[12]."""
    # Round constant 0xf0.
    x2 ^= 0xF0
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0xe1.
    x2 ^= 0xE1
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0xd2.
    x2 ^= 0xD2
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    # Round constant 0xc3.
    x2 ^= 0xC3
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _MASK) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _MASK)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ ((d := (x2 & _MASK) * _DOUBLE) >> 19) ^ (d >> 28)
    x2 = x4 ^ ((d := (x4 & _MASK) * _DOUBLE) >> 1) ^ (d >> 6)
    x4 = x1 ^ ((d := (x1 & _MASK) * _DOUBLE) >> 7) ^ (d >> 41)
    x1 = x3 ^ ((d := (x3 & _MASK) * _DOUBLE) >> 61) ^ (d >> 39)
    x3 = x0 ^ ((d := (x0 & _MASK) * _DOUBLE) >> 10) ^ (d >> 17)
    x0 = t0
    return p8(x0, x1, x2, x3, x4)
