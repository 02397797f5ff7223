"""The store-backed Merkle tree: proofs from persisted complete subtrees.

A log never recomputes its tree. When leaves are appended, :func:`integrate`
folds them into the *compact range* (the roots of the complete subtrees that
make up the tree, one per set bit of its size) and emits the hash of every
complete subtree that the append completed at a *stored level*: level 0 (the
leaf hashes, kept with the entries) and every level that is a multiple of
:data:`STRIDE`. A node at another level is rebuilt from at most
``2**(STRIDE-1)`` stored nodes below it.

Every RFC 9162 proof element is the hash of a subtree ``[a, b)`` whose start
is aligned to its size, i.e. a right fold over at most ``log2(n)`` complete
subtrees, so a proof needs O(log n) stored hashes, fetched in one batch
through a :class:`HashReader`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from iotguard.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    _consistency_ranges,
    _inclusion_ranges,
    node_hash,
)
from iotguard.errors import ProofError, StorageError

__all__ = [
    "STRIDE",
    "CompactRange",
    "HashReader",
    "NodeKey",
    "StoredTree",
    "integrate",
    "range_nodes",
]

#: Interior levels stored: every STRIDE-th. 4 stores ~1/15 node per leaf and
#: rebuilds any node from at most 8 stored ones.
STRIDE = 4

#: A complete subtree: ``(level, index)`` covers leaves
#: ``[index * 2**level, (index + 1) * 2**level)``.
NodeKey = tuple[int, int]


class HashReader(Protocol):
    """Read access to stored node hashes (level 0 or a multiple of STRIDE)."""

    def read_hashes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        """Return the hash of every key; missing keys may be absent from the result."""
        ...


@dataclass(frozen=True)
class CompactRange:
    """Roots of the complete subtrees of a tree of ``size`` leaves, largest first."""

    size: int
    hashes: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.hashes) != self.size.bit_count():
            raise StorageError("compact range does not match its size")

    def root(self) -> bytes:
        """MTH of the whole tree."""
        if not self.hashes:
            return EMPTY_ROOT
        node = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            node = node_hash(left, node)
        return node

    def nodes(self) -> list[NodeKey]:
        """The node keys of :attr:`hashes`, in the same order."""
        keys: list[NodeKey] = []
        start = 0
        for level in range(self.size.bit_length() - 1, -1, -1):
            if self.size >> level & 1:
                keys.append((level, start >> level))
                start += 1 << level
        return keys

    def encode(self) -> bytes:
        """Concatenated hashes (the size is stored beside them)."""
        return b"".join(self.hashes)

    @classmethod
    def decode(cls, size: int, blob: bytes) -> CompactRange:
        """Inverse of :meth:`encode`.

        Raises:
            StorageError: the blob does not match the size.
        """
        if len(blob) != HASH_SIZE * size.bit_count():
            raise StorageError("stored compact range is corrupt")
        return cls(size, tuple(blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)))


def integrate(
    compact: CompactRange, leaf_hashes: Iterable[bytes]
) -> tuple[CompactRange, list[tuple[NodeKey, bytes]]]:
    """Append leaves to a compact range.

    Returns:
        The new compact range and the newly completed nodes at stored
        interior levels (multiples of :data:`STRIDE`), to persist.
    """
    size = compact.size
    stack = list(compact.hashes)
    new_nodes: list[tuple[NodeKey, bytes]] = []
    append = new_nodes.append
    for node in leaf_hashes:
        level = 0
        index = size
        while size >> level & 1:
            node = node_hash(stack.pop(), node)
            level += 1
            index >>= 1
            if level % STRIDE == 0:
                append(((level, index), node))
        stack.append(node)
        size += 1
    return CompactRange(size, tuple(stack)), new_nodes


def range_nodes(start: int, end: int) -> list[NodeKey]:
    """Complete subtrees, largest first, whose right fold is MTH of ``D[start:end]``.

    ``[start, end)`` must be a subtree (``start`` aligned to the size).
    """
    keys: list[NodeKey] = []
    size = end - start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            keys.append((level, start >> level))
            start += 1 << level
    return keys


def _stored_children(key: NodeKey) -> list[NodeKey]:
    level, index = key
    base = level - level % STRIDE
    span = 1 << (level - base)
    return [(base, index * span + j) for j in range(span)]


class StoredTree:
    """Proofs and roots computed from stored node hashes.

    Args:
        reader: The store's read access to node hashes.
    """

    def __init__(self, reader: HashReader) -> None:
        self._reader = reader

    def node_hashes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        """Hashes of complete subtrees, read in one batch.

        Raises:
            StorageError: a stored hash the tree needs is missing.
        """
        wanted: dict[NodeKey, list[NodeKey]] = {k: _stored_children(k) for k in keys}
        stored_keys = sorted({c for children in wanted.values() for c in children})
        stored = self._reader.read_hashes(stored_keys)
        out: list[bytes] = []
        for key in keys:
            try:
                level = [stored[c] for c in wanted[key]]
            except KeyError:
                raise StorageError(f"stored tree is missing nodes under {key}") from None
            while len(level) > 1:
                level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
            out.append(level[0])
        return out

    def _range_hashes(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        plan = [range_nodes(a, b) for a, b in ranges]
        flat = self.node_hashes([k for nodes in plan for k in nodes])
        out: list[bytes] = []
        pos = 0
        for nodes in plan:
            parts = flat[pos : pos + len(nodes)]
            pos += len(nodes)
            node = parts[-1]
            for left in reversed(parts[:-1]):
                node = node_hash(left, node)
            out.append(node)
        return out

    def root_hash(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves."""
        if size == 0:
            return EMPTY_ROOT
        return self._range_hashes([(0, size)])[0]

    def compact_range(self, size: int) -> CompactRange:
        """The compact range of the first ``size`` leaves."""
        keys = CompactRange(size, (b"",) * size.bit_count()).nodes()
        return CompactRange(size, tuple(self.node_hashes(keys)))

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree of ``tree_size`` leaves.

        Raises:
            ProofError: ``index`` is not a leaf of that tree.
        """
        if not 0 <= index < tree_size:
            raise ProofError("leaf index is outside the tree")
        return self._range_hashes(_inclusion_ranges(index, tree_size))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof between two sizes of the tree.

        Raises:
            ProofError: the sizes are not ``0 < old_size <= new_size``.
        """
        if not 0 < old_size <= new_size:
            raise ProofError("old size must be in 1..new size")
        if old_size == new_size:
            return []
        return self._range_hashes(_consistency_ranges(old_size, new_size))
