"""Lane layout and block-step machinery shared by the batched Ascon modes.

Messages become rows of bytes, rows become lanes of bitsliced planes, and a
step loop absorbs block ``j`` of every message that has one (see
:mod:`.batch` for how unequal lengths are handled).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from iotguard.crypto.ascon._bitslice import (
    LANES_PER_GROUP,
    Permutation,
    Words,
    constant_planes,
    lane_bits,
)
from iotguard.crypto.ascon._permutation import WORD_MASK

__all__ = [
    "ByteMatrix",
    "IntArray",
    "Lanes",
    "Steps",
    "absorb_steps",
    "byte_planes",
    "chunks",
    "constant_block_planes",
    "gather",
    "lengths",
    "place",
    "row_bytes",
    "split",
]

IntArray = npt.NDArray[np.int64]
ByteMatrix = npt.NDArray[np.uint8]


def lengths(items: Sequence[bytes]) -> IntArray:
    return np.fromiter(map(len, items), dtype=np.int64, count=len(items))


def place(rows: ByteMatrix, data: bytes, lengths: IntArray, columns: IntArray) -> None:
    """Copy lane ``i``'s bytes (consecutive in ``data``) to ``rows[i, columns[i]:]``."""
    n = len(lengths)
    if not len(data) or not n:
        return
    src = np.frombuffer(data, dtype=np.uint8)
    first = int(lengths[0])
    if (lengths == first).all() and (columns == columns[0]).all():
        col = int(columns[0])
        rows[:n, col : col + first] = src.reshape(n, first)
        return
    starts = np.cumsum(lengths) - lengths
    lane = np.repeat(np.arange(n, dtype=np.int64), lengths)
    column = np.repeat(columns - starts, lengths) + np.arange(len(data), dtype=np.int64)
    rows[lane, column] = src


def gather(rows: ByteMatrix, lengths: IntArray, columns: IntArray) -> bytes:
    """Concatenate ``rows[i, columns[i] : columns[i] + lengths[i]]`` over lanes."""
    n = len(lengths)
    first = int(lengths[0]) if n else 0
    if n and (lengths == first).all() and (columns == columns[0]).all():
        col = int(columns[0])
        return rows[:n, col : col + first].tobytes()
    width = rows.shape[1]
    starts = np.cumsum(lengths) - lengths
    base = np.arange(n, dtype=np.int64) * width + columns - starts
    index = np.repeat(base, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return rows.reshape(-1)[index].tobytes()


def row_bytes(rows: ByteMatrix) -> list[bytes]:
    """One ``bytes`` per row, built in C (a void view's ``tolist``)."""
    if not rows.shape[1]:
        return [b""] * rows.shape[0]
    return np.ascontiguousarray(rows).view(f"V{rows.shape[1]}").reshape(-1).tolist()


def split(data: bytes, lengths: IntArray) -> list[bytes]:
    n = len(lengths)
    if n and (lengths == lengths[0]).all():
        size = int(lengths[0])
        if not size:
            return [b""] * n
        return [data[i : i + size] for i in range(0, n * size, size)]
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    return [data[s:e] for s, e in zip(starts, ends, strict=True)]


def chunks(blocks: IntArray, block_bytes: int, max_lanes: int, buffer_bytes: int) -> list[tuple[int, int]]:
    """Split lanes (sorted by descending block count) into chunks.

    A chunk holds at most ``max_lanes`` lanes and, padded to its longest
    message, about ``buffer_bytes`` bytes (but at least one group).
    """
    out: list[tuple[int, int]] = []
    start, n = 0, len(blocks)
    while start < n:
        row = (int(blocks[start]) + 4) * block_bytes
        lanes = max(LANES_PER_GROUP, min(max_lanes, buffer_bytes // row))
        lanes -= lanes % LANES_PER_GROUP
        out.append((start, min(n, start + lanes)))
        start += lanes
    return out


class Lanes:
    """Where each message of a chunk sits among the ``64 * groups`` lanes.

    Messages arrive sorted by descending block count (index ``k``). When
    their block counts differ, message ``k`` goes to group ``k // 64`` so
    each group holds messages of similar length and the step loop can stop
    whole groups early; when they are all alike the order is left as is.
    Padding lanes copy the schedule of the last message and are discarded.
    """

    def __init__(self, count: int, interleave: bool) -> None:
        self.count = count
        self.groups = -(-count // LANES_PER_GROUP)
        self.size = self.groups * LANES_PER_GROUP
        self.order: IntArray | None = None
        if interleave:
            position = np.arange(self.size, dtype=np.int64)
            # Lane n is bit n // groups of group n % groups.
            self.order = (position % self.groups) * LANES_PER_GROUP + position // self.groups

    def spread(self, values: IntArray) -> IntArray:
        """Per-message values (index ``k``) to per-lane values (edge padded)."""
        padded = np.pad(values, [(0, self.size - self.count)] + [(0, 0)] * (values.ndim - 1), mode="edge")
        return padded if self.order is None else padded[self.order]

    def words(self, rows: ByteMatrix) -> Words:
        """Byte rows of the messages as lane-major little-endian words."""
        if rows.shape[0] == self.size:
            padded = rows
        else:
            padded = np.zeros((self.size, rows.shape[1]), dtype=np.uint8)
            padded[: self.count] = rows
        if self.order is not None:
            padded = padded[self.order]
        return padded.view("<u8").astype(np.uint64, copy=False)

    def rows(self, lanes: Words) -> ByteMatrix:
        """Lane-major words back to byte rows in message order."""
        if self.order is not None:
            back = np.empty_like(lanes)
            back[self.order] = lanes
            lanes = back
        return lanes.view(np.uint8)[: self.count]


def byte_planes(select: npt.NDArray[np.bool_]) -> Words:
    """Planes (2, 64, g) from a per-lane, per-byte selection of shape (lanes, 16)."""
    per_byte = np.stack([lane_bits(select[:, i]) for i in range(16)])
    return np.repeat(per_byte, 8, axis=0).reshape(2, 64, -1)


def constant_block_planes(value: int) -> Words:
    """Planes (2, 64, 1) of a 16-byte little-endian block equal in every lane."""
    return np.stack([constant_planes(value & WORD_MASK), constant_planes(value >> 64)])


class Steps:
    """Which groups and lanes take part in absorption step ``j``."""

    def __init__(self, blocks: IntArray, groups: int) -> None:
        self.blocks = blocks
        per_group = blocks.reshape(LANES_PER_GROUP, groups)
        self._group_max = per_group.max(axis=0)
        self._group_min = per_group.min(axis=0)
        self.last = int(self._group_max.max())

    def span(self, j: int) -> tuple[int, int]:
        """Return ``(full, width)``: groups ``[0, full)`` all take step ``j``,
        groups ``[full, width)`` only partly."""
        width = int(np.count_nonzero(self._group_max > j))
        full = int(np.count_nonzero(self._group_min > j))
        return full, width

    def active(self, j: int) -> Words:
        return lane_bits(self.blocks > j)


def absorb_steps(
    permutation: Permutation,
    state: Words,
    steps: Steps,
    rounds: int,
    step: Callable[[int, int], None],
) -> None:
    """Run ``step(j, width)`` then Ascon-p[rounds] for every block index ``j``."""
    for j in range(steps.last):
        full, width = steps.span(j)
        saved = state[:, :, full:width].copy() if full < width else None
        step(j, width)
        permutation.apply(rounds, width)
        if saved is not None:
            keep = steps.active(j)[full:width]
            part = state[:, :, full:width]
            part ^= saved
            part &= keep
            part ^= saved
