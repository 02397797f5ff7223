"""The Ascon permutation on Python integers (NIST SP 800-232, section 3).

The 320-bit state is five 64-bit words ``x0..x4``. SP 800-232 maps bytes to
words little-endian; that mapping happens in the callers, this module only
permutes words.

The rounds are unrolled and written for CPython's speed, not for reading
against the standard (``bench/aead.py`` keeps a literal version):

* The substitution layer uses a 17-operation bitsliced form of the Ascon
  S-box (three temporaries, two complements), equivalent to SP 800-232's
  formula; its outputs ``y0..y4`` land in ``x2, x3, x4, x0, x1``, which the
  linear layer reads from there.
* Rotations are the costly part of the linear layer. Each word is carried
  as five copies side by side (``x * _SPREAD``, 320 bits). Then
  ``x >> n`` has ``rotr(x, n)`` in every copy but the top one, so
  ``x ^ (x >> a) ^ (x >> b)`` is the linear layer of one fewer valid copy,
  with no masking. After four rounds one copy is left: it is masked and
  spread again. Bitwise operations never move bits between copies, so the
  substitution layer works on all copies at once.
"""

from __future__ import annotations

__all__ = ["ROUND_CONSTANTS", "WORD_MASK", "p8", "p12"]

#: All-ones 64-bit word.
WORD_MASK = 0xFFFF_FFFF_FFFF_FFFF
_MASK = WORD_MASK
_COPIES = 5
#: Multiplying a 64-bit word by this lays ``_COPIES`` copies side by side.
_SPREAD = sum(1 << (64 * i) for i in range(_COPIES))
_ONES = (1 << (64 * _COPIES)) - 1

#: The 12 round constants of Ascon-p[12]; Ascon-p[8] uses the last 8.
ROUND_CONSTANTS = (0xF0, 0xE1, 0xD2, 0xC3, 0xB4, 0xA5, 0x96, 0x87, 0x78, 0x69, 0x5A, 0x4B)

State = tuple[int, int, int, int, int]


def p8(x0: int, x1: int, x2: int, x3: int, x4: int) -> State:
    """Ascon-p[8]: the last 8 rounds of Ascon-p[12]. Words must be < 2**64."""
    x0 *= _SPREAD
    x1 *= _SPREAD
    x2 *= _SPREAD
    x3 *= _SPREAD
    x4 *= _SPREAD
    # Round constant 0xb4.
    x2 ^= 0xB4 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ (x2 >> 19) ^ (x2 >> 28)
    x2 = x4 ^ (x4 >> 1) ^ (x4 >> 6)
    x4 = x1 ^ (x1 >> 7) ^ (x1 >> 41)
    x1 = x3 ^ (x3 >> 61) ^ (x3 >> 39)
    x3 = x0 ^ (x0 >> 10) ^ (x0 >> 17)
    x0 = t0
    # Round constant 0xa5.
    x2 ^= 0xA5 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ (x2 >> 19) ^ (x2 >> 28)
    x2 = x4 ^ (x4 >> 1) ^ (x4 >> 6)
    x4 = x1 ^ (x1 >> 7) ^ (x1 >> 41)
    x1 = x3 ^ (x3 >> 61) ^ (x3 >> 39)
    x3 = x0 ^ (x0 >> 10) ^ (x0 >> 17)
    x0 = t0
    # Round constant 0x96.
    x2 ^= 0x96 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ (x2 >> 19) ^ (x2 >> 28)
    x2 = x4 ^ (x4 >> 1) ^ (x4 >> 6)
    x4 = x1 ^ (x1 >> 7) ^ (x1 >> 41)
    x1 = x3 ^ (x3 >> 61) ^ (x3 >> 39)
    x3 = x0 ^ (x0 >> 10) ^ (x0 >> 17)
    x0 = t0
    # Round constant 0x87.
    x2 ^= 0x87 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    # Four rounds used up the copies: keep one and spread it again.
    t0 = ((x2 ^ (x2 >> 19) ^ (x2 >> 28)) & _MASK) * _SPREAD
    x2 = ((x4 ^ (x4 >> 1) ^ (x4 >> 6)) & _MASK) * _SPREAD
    x4 = ((x1 ^ (x1 >> 7) ^ (x1 >> 41)) & _MASK) * _SPREAD
    x1 = ((x3 ^ (x3 >> 61) ^ (x3 >> 39)) & _MASK) * _SPREAD
    x3 = ((x0 ^ (x0 >> 10) ^ (x0 >> 17)) & _MASK) * _SPREAD
    x0 = t0
    # Round constant 0x78.
    x2 ^= 0x78 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ (x2 >> 19) ^ (x2 >> 28)
    x2 = x4 ^ (x4 >> 1) ^ (x4 >> 6)
    x4 = x1 ^ (x1 >> 7) ^ (x1 >> 41)
    x1 = x3 ^ (x3 >> 61) ^ (x3 >> 39)
    x3 = x0 ^ (x0 >> 10) ^ (x0 >> 17)
    x0 = t0
    # Round constant 0x69.
    x2 ^= 0x69 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ (x2 >> 19) ^ (x2 >> 28)
    x2 = x4 ^ (x4 >> 1) ^ (x4 >> 6)
    x4 = x1 ^ (x1 >> 7) ^ (x1 >> 41)
    x1 = x3 ^ (x3 >> 61) ^ (x3 >> 39)
    x3 = x0 ^ (x0 >> 10) ^ (x0 >> 17)
    x0 = t0
    # Round constant 0x5a.
    x2 ^= 0x5A * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ (x2 >> 19) ^ (x2 >> 28)
    x2 = x4 ^ (x4 >> 1) ^ (x4 >> 6)
    x4 = x1 ^ (x1 >> 7) ^ (x1 >> 41)
    x1 = x3 ^ (x3 >> 61) ^ (x3 >> 39)
    x3 = x0 ^ (x0 >> 10) ^ (x0 >> 17)
    x0 = t0
    # Round constant 0x4b.
    x2 ^= 0x4B * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    # Keep the one valid copy.
    t0 = (x2 ^ (x2 >> 19) ^ (x2 >> 28)) & _MASK
    x2 = (x4 ^ (x4 >> 1) ^ (x4 >> 6)) & _MASK
    x4 = (x1 ^ (x1 >> 7) ^ (x1 >> 41)) & _MASK
    x1 = (x3 ^ (x3 >> 61) ^ (x3 >> 39)) & _MASK
    x3 = (x0 ^ (x0 >> 10) ^ (x0 >> 17)) & _MASK
    x0 = t0
    return x0, x1, x2, x3, x4


def p12(x0: int, x1: int, x2: int, x3: int, x4: int) -> State:
    """Ascon-p[12]. Words must be < 2**64."""
    x0 *= _SPREAD
    x1 *= _SPREAD
    x2 *= _SPREAD
    x3 *= _SPREAD
    x4 *= _SPREAD
    # Round constant 0xf0.
    x2 ^= 0xF0 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ (x2 >> 19) ^ (x2 >> 28)
    x2 = x4 ^ (x4 >> 1) ^ (x4 >> 6)
    x4 = x1 ^ (x1 >> 7) ^ (x1 >> 41)
    x1 = x3 ^ (x3 >> 61) ^ (x3 >> 39)
    x3 = x0 ^ (x0 >> 10) ^ (x0 >> 17)
    x0 = t0
    # Round constant 0xe1.
    x2 ^= 0xE1 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ (x2 >> 19) ^ (x2 >> 28)
    x2 = x4 ^ (x4 >> 1) ^ (x4 >> 6)
    x4 = x1 ^ (x1 >> 7) ^ (x1 >> 41)
    x1 = x3 ^ (x3 >> 61) ^ (x3 >> 39)
    x3 = x0 ^ (x0 >> 10) ^ (x0 >> 17)
    x0 = t0
    # Round constant 0xd2.
    x2 ^= 0xD2 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    t0 = x2 ^ (x2 >> 19) ^ (x2 >> 28)
    x2 = x4 ^ (x4 >> 1) ^ (x4 >> 6)
    x4 = x1 ^ (x1 >> 7) ^ (x1 >> 41)
    x1 = x3 ^ (x3 >> 61) ^ (x3 >> 39)
    x3 = x0 ^ (x0 >> 10) ^ (x0 >> 17)
    x0 = t0
    # Round constant 0xc3.
    x2 ^= 0xC3 * _SPREAD
    t0 = x1 ^ x2
    t1 = x0 ^ x4
    t2 = x3 ^ x4
    x4 = ((x4 ^ _ONES) | x3) ^ t0
    x3 = ((x3 ^ x1) | t0) ^ t1
    x2 = ((x2 ^ t1) | x1) ^ t2
    x1 = (x1 & (t1 ^ _ONES)) ^ t2
    x0 = (x0 | t2) ^ t0
    # Keep the one valid copy.
    t0 = (x2 ^ (x2 >> 19) ^ (x2 >> 28)) & _MASK
    x2 = (x4 ^ (x4 >> 1) ^ (x4 >> 6)) & _MASK
    x4 = (x1 ^ (x1 >> 7) ^ (x1 >> 41)) & _MASK
    x1 = (x3 ^ (x3 >> 61) ^ (x3 >> 39)) & _MASK
    x3 = (x0 ^ (x0 >> 10) ^ (x0 >> 17)) & _MASK
    x0 = t0
    return p8(x0, x1, x2, x3, x4)
