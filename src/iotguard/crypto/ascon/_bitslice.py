"""Bitsliced Ascon permutation over many lanes with NumPy.

The hub opens thousands of envelopes at once. Instead of one 64-bit word per
message (where every rotation of the linear layer costs two shifts and an
OR), lanes are *bitsliced*: a state word is stored as 64 bit-planes, and
each ``uint64`` element of a plane holds that bit for 64 different lanes.
Rotations then cost nothing (they are slices of the plane axis) and the
linear layer is two XORs per plane; the S-box is the same 17-operation
bitwise formula as the scalar code, each operation one NumPy call over all
planes and lanes.

Arrays have shape ``(words, 64, groups)``; lane ``n`` of a batch of
``64 * groups`` lanes is bit ``n // groups`` of group ``n % groups``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from iotguard.crypto.ascon._permutation import ROUND_CONSTANTS, WORD_MASK

__all__ = [
    "LANES_PER_GROUP",
    "Permutation",
    "Words",
    "constant_planes",
    "from_planes",
    "lane_bits",
    "lane_flags",
    "new_planes",
    "to_planes",
    "transpose_bits",
]

Words = npt.NDArray[np.uint64]

#: Lanes held by one ``uint64`` plane element.
LANES_PER_GROUP = 64

# Right-rotation amounts of the linear layer, per state word.
_ROTATIONS = ((19, 28), (61, 39), (1, 6), (10, 17), (7, 41))
# Masks of the 64x64 bit-matrix transpose, by block size.
_TRANSPOSE_STAGES = tuple(
    (j, np.uint64(m))
    for j, m in (
        (32, 0x00000000FFFFFFFF),
        (16, 0x0000FFFF0000FFFF),
        (8, 0x00FF00FF00FF00FF),
        (4, 0x0F0F0F0F0F0F0F0F),
        (2, 0x3333333333333333),
        (1, 0x5555555555555555),
    )
)


def constant_planes(value: int) -> Words:
    """Planes of a word that is the same in every lane, shape ``(64, 1)``."""
    bits = [(value >> b) & 1 for b in range(64)]
    return np.array([WORD_MASK if bit else 0 for bit in bits], dtype=np.uint64).reshape(64, 1)


def transpose_bits(work: Words) -> None:
    """Transpose every 64x64 bit matrix along axis 0, in place.

    ``work`` has shape ``(64, ...)``; for every index ``i`` of the other
    axes, the words ``work[:, i]`` are the rows of a bit matrix. The
    transpose is its own inverse, so it converts lanes to planes and back.
    Keeping the 64 rows outermost makes every NumPy call run over long
    contiguous stretches.
    """
    inner = work.size // 64
    flat = work.reshape(64, inner)
    scratch = np.empty(32 * inner, dtype=np.uint64)
    for j, mask in _TRANSPOSE_STAGES:
        view = flat.reshape(64 // (2 * j), 2, j * inner)
        upper = view[:, 0]
        lower = view[:, 1]
        t = scratch.reshape(64 // (2 * j), j * inner)
        shift = np.uint64(j)
        np.right_shift(upper, shift, out=t)
        t ^= lower
        t &= mask
        lower ^= t
        np.left_shift(t, shift, out=t)
        upper ^= t


#: Words per lane converted together: 64 x 8 words x the groups (1 MiB at
#: 16,384 lanes) stay in cache from the gather through the bit transpose.
_CONVERT_WORDS = 8


def to_planes(lanes: Words) -> Words:
    """Convert lane-major words ``(64 * g, w)`` into planes ``(w, 64, g)``.

    Lane ``n`` is bit ``n // g`` of group ``n % g``. The words are converted
    a few at a time, so the gather and the bit transpose of each block run
    in cache.
    """
    n, count = lanes.shape
    groups = n // LANES_PER_GROUP
    planes = np.empty((count, LANES_PER_GROUP, groups), dtype=np.uint64)
    source = lanes.reshape(LANES_PER_GROUP, groups, count)
    for start in range(0, count, _CONVERT_WORDS):
        stop = min(count, start + _CONVERT_WORDS)
        work = np.ascontiguousarray(source[:, :, start:stop].transpose(0, 2, 1))
        transpose_bits(work)
        planes[start:stop] = work.transpose(1, 0, 2)
    return planes


def new_planes(count: int, groups: int) -> Words:
    """Zeroed planes ``(count, 64, groups)``."""
    return np.zeros((count, LANES_PER_GROUP, groups), dtype=np.uint64)


def from_planes(planes: Words) -> Words:
    """Convert planes ``(w, 64, g)`` back to lane-major words ``(64 * g, w)``, a few words at a time."""
    count, _, groups = planes.shape
    lanes = np.empty((LANES_PER_GROUP, groups, count), dtype=np.uint64)
    for start in range(0, count, _CONVERT_WORDS):
        stop = min(count, start + _CONVERT_WORDS)
        work = np.ascontiguousarray(planes[start:stop].transpose(1, 0, 2))
        transpose_bits(work)
        lanes[:, :, start:stop] = work.transpose(0, 2, 1)
    return lanes.reshape(groups * LANES_PER_GROUP, count)


def lane_bits(flags: npt.NDArray[np.bool_]) -> Words:
    """Pack one boolean per lane into one ``uint64`` per group (lane ``n``: group ``n % g``)."""
    packed = np.packbits(flags.reshape(LANES_PER_GROUP, -1), axis=0, bitorder="little")
    return np.ascontiguousarray(packed.T).view("<u8").reshape(-1).astype(np.uint64, copy=False)


def lane_flags(bits: Words) -> npt.NDArray[np.bool_]:
    """Inverse of :func:`lane_bits`: one boolean per lane."""
    as_bytes = bits.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)
    unpacked = np.unpackbits(as_bytes, axis=1, bitorder="little")
    return np.ascontiguousarray(unpacked.T).reshape(-1).astype(np.bool_)


def _plane_runs(value: int) -> tuple[tuple[int, int], ...]:
    """Maximal runs ``(start, stop)`` of set bits of ``value``."""
    runs: list[tuple[int, int]] = []
    b = 0
    while b < 64:
        if (value >> b) & 1:
            start = b
            while b < 64 and (value >> b) & 1:
                b += 1
            runs.append((start, b))
        else:
            b += 1
    return tuple(runs)


# Round constants as runs of planes of x2 to complement.
_ROUND_RUNS = tuple(_plane_runs(c) for c in ROUND_CONSTANTS)


class _RoundPlan:
    """Pre-built views for one round from one buffer into the other.

    Slicing a NumPy array costs about as much as a small ufunc call, and a
    round makes dozens of slices; building them once per width pays off.
    """

    def __init__(self, source: Words, target: Words, scratch: Words, width: int) -> None:
        s = source[:, :, :width]
        t = target[:, :, :width]
        self.words = tuple(s)
        self.temps = tuple(scratch[:, :, :width])
        x2 = self.words[2]
        self.constants = tuple(tuple(x2[start:stop] for start, stop in runs) for runs in _ROUND_RUNS)
        linear: list[tuple[Words, Words, Words]] = []
        x0, x1, x2, x3, x4 = self.words
        for w, src in enumerate((x2, x3, x4, x0, x1)):
            a, b = _ROTATIONS[w]
            dst = t[w]
            linear += [
                (src[: 64 - a], src[a:], dst[: 64 - a]),
                (src[64 - a :], src[:a], dst[64 - a :]),
                (dst[: 64 - b], src[b:], dst[: 64 - b]),
                (dst[64 - b :], src[:b], dst[64 - b :]),
            ]
        self.linear = tuple(linear)


class Permutation:
    """Ascon-p[rounds] on a bitsliced state of up to ``groups`` groups.

    Owns the state (:attr:`state`, shape ``(5, 64, groups)``) and its
    scratch buffers, so a batch allocates them once.
    """

    def __init__(self, groups: int) -> None:
        self.state = np.empty((5, 64, groups), dtype=np.uint64)
        self._spare = np.empty((5, 64, groups), dtype=np.uint64)
        self._scratch = np.empty((3, 64, groups), dtype=np.uint64)
        self._plans: dict[int, tuple[_RoundPlan, _RoundPlan]] = {}

    def _plan(self, width: int) -> tuple[_RoundPlan, _RoundPlan]:
        plan = self._plans.get(width)
        if plan is None:
            plan = (
                _RoundPlan(self.state, self._spare, self._scratch, width),
                _RoundPlan(self._spare, self.state, self._scratch, width),
            )
            self._plans[width] = plan
        return plan

    def apply(self, rounds: int, width: int) -> None:
        """Apply Ascon-p[rounds] to the first ``width`` groups of :attr:`state`.

        ``rounds`` must be 8 or 12: the linear layer alternates the result
        between the state and a spare buffer, so an even count ends in the
        state. The substitution layer is the 17-operation form of the S-box
        also used by the scalar code (outputs ``y0..y4`` land in ``x2, x3,
        x4, x0, x1``); the linear layer reads them from there.
        """
        xor = np.bitwise_xor
        bor = np.bitwise_or
        band = np.bitwise_and
        invert = np.invert
        plans = self._plan(width)
        for r in range(12 - rounds, 12):
            plan = plans[r % 2]
            x0, x1, x2, x3, x4 = plan.words
            t0, t1, t2 = plan.temps
            for run in plan.constants[r]:
                invert(run, run)
            xor(x1, x2, t0)
            xor(x0, x4, t1)
            xor(x3, x4, t2)
            invert(x4, x4)
            bor(x4, x3, x4)
            xor(x4, t0, x4)
            xor(x3, x1, x3)
            bor(x3, t0, x3)
            xor(x3, t1, x3)
            xor(x2, t1, x2)
            bor(x2, x1, x2)
            xor(x2, t2, x2)
            invert(t1, t1)
            band(x1, t1, x1)
            xor(x1, t2, x1)
            bor(x0, t2, x0)
            xor(x0, t0, x0)
            # Linear layer: plane i of rotr(y, a) is plane (i + a) % 64 of y.
            for left, right, out in plan.linear:
                xor(left, right, out)
