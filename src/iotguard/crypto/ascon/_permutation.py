"""The Ascon permutation on Python integers (NIST SP 800-232, section 3).

The 320-bit state is five 64-bit words ``x0..x4``. SP 800-232 maps bytes to
words little-endian; that mapping happens in the callers, this module only
permutes words.

For speed the state is carried with ``x2`` *complemented*: the substitution
layer ends with ``x2 = ~x2`` and the linear layer commutes with complement,
so instead of complementing at the end of every round the complement is
folded into the next round's constant (``c ^ 0xff..ff``). Callers therefore
store ``~S2`` in ``x2`` on the way in and read ``~x2`` on the way out; XORing
data or key material into ``x2`` is unaffected. The rounds are unrolled and
the two 64-bit rotations of each linear-layer word share one 128-bit doubled
word ``d = x | x << 64`` (``rotr(x, n) == (d >> n) & mask``), which is the
fastest form measured on CPython 3.11.
"""

from __future__ import annotations

__all__ = ["ROUND_CONSTANTS", "WORD_MASK", "p8", "p12"]

#: All-ones 64-bit word.
WORD_MASK = 0xFFFF_FFFF_FFFF_FFFF
_MASK = WORD_MASK

#: The 12 round constants of Ascon-p[12]; Ascon-p[8] uses the last 8.
ROUND_CONSTANTS = (0xF0, 0xE1, 0xD2, 0xC3, 0xB4, 0xA5, 0x96, 0x87, 0x78, 0x69, 0x5A, 0x4B)

State = tuple[int, int, int, int, int]


def p8(x0: int, x1: int, x2: int, x3: int, x4: int) -> State:
    """Ascon-p[8] on a state whose ``x2`` is stored complemented."""
    # Round constant 0xb4, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF4B ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0xa5, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF5A ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0x96, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF69 ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0x87, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF78 ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0x78, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF87 ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0x69, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF96 ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0x5a, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFFA5 ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0x4b, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFFB4 ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    return x0, x1, x2, x3, x4


def p12(x0: int, x1: int, x2: int, x3: int, x4: int) -> State:
    """Ascon-p[12] on a state whose ``x2`` is stored complemented."""
    # Round constant 0xf0, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF0F ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0xe1, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF1E ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0xd2, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF2D ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    # Round constant 0xc3, folded with the complement of x2.
    x2 ^= 0xFFFFFFFFFFFFFF3C ^ x1
    x0 ^= x4
    x4 ^= x3
    t0 = x0 ^ ((x1 | x2) ^ x1)
    t1 = x1 ^ ((x2 | x3) ^ x2) ^ t0
    t2 = x2 ^ ((x3 | x4) ^ x3)
    t3 = x3 ^ ((x4 | x0) ^ x4) ^ t2
    t4 = x4 ^ ((x0 | x1) ^ x0)
    t0 ^= t4
    x0 = (t0 ^ ((d := t0 | t0 << 64) >> 19) ^ (d >> 28)) & _MASK
    x1 = (t1 ^ ((d := t1 | t1 << 64) >> 61) ^ (d >> 39)) & _MASK
    x2 = (t2 ^ ((d := t2 | t2 << 64) >> 1) ^ (d >> 6)) & _MASK
    x3 = (t3 ^ ((d := t3 | t3 << 64) >> 10) ^ (d >> 17)) & _MASK
    x4 = (t4 ^ ((d := t4 | t4 << 64) >> 7) ^ (d >> 41)) & _MASK
    return p8(x0, x1, x2, x3, x4)
