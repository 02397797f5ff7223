"""Hashed integer-keyed tables that the compiled feature kernel reads and writes in place (internal).

:class:`HashedKeyTable` has the interface of :class:`._tables.KeyTable`
(``get``, ``put``, ``items``, ``keep``, ``drop``, ``len``) over an open-addressing
hash table: keys (non-negative ``int64``) in a power-of-two array with
``-1`` marking an empty slot, linear probing from the top bits of the key's
Fibonacci hash, and the value columns in a parallel ``float64`` array. The
kernel (:func:`._compiled.extract_batch`) probes it per flow, so a batch
needs no sort, no binary search and no merge. The table is kept at most
half full; removing entries (host eviction, per-host trimming) rebuilds it,
which happens rarely. :meth:`HashedKeyTable.items` returns the keys sorted,
as the sorted table does, so trimming and serialisation see the same order.

Imports Numba; only the compiled path builds these tables.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["HashedKeyTable", "probe"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = -1
_MIN_BITS = 12


@numba.njit(cache=False, nogil=True)
def probe(keys: IntArray, shift: np.uint64, key: int) -> int:  # pragma: no cover - compiled
    """Slot holding ``key``, or the empty slot where it belongs (the table is never full)."""
    mask = keys.shape[0] - 1
    j = np.int64((np.uint64(key) * _GOLDEN) >> shift)
    while True:
        k = keys[j]
        if k == key or k < 0:  # keys are non-negative; an empty slot holds -1
            return int(j)
        j = (j + 1) & mask


@numba.njit(cache=False, nogil=True)
def _get(keys: IntArray, values: FloatArray, shift: np.uint64, query: IntArray,
         out: FloatArray) -> npt.NDArray[np.bool_]:  # pragma: no cover - compiled
    found = np.zeros(query.shape[0], dtype=np.bool_)
    for i in range(query.shape[0]):
        j = probe(keys, shift, query[i])
        if keys[j] != _EMPTY:
            found[i] = True
            out[i, :] = values[j, :]
    return found


@numba.njit(cache=False, nogil=True)
def _slots(keys: IntArray, shift: np.uint64, query: IntArray) -> IntArray:  # pragma: no cover - compiled
    """The slot of each query key (held keys)."""
    out = np.empty(query.shape[0], dtype=np.int64)
    for i in range(query.shape[0]):
        out[i] = probe(keys, shift, query[i])
    return out


@numba.njit(cache=False, nogil=True)
def _put(keys: IntArray, values: FloatArray, shift: np.uint64, new_keys: IntArray,
         new_values: FloatArray) -> int:  # pragma: no cover - compiled
    """Insert or overwrite; returns the number of keys added."""
    added = 0
    for i in range(new_keys.shape[0]):
        j = probe(keys, shift, new_keys[i])
        if keys[j] == _EMPTY:
            keys[j] = new_keys[i]
            added += 1
        values[j, :] = new_values[i, :]
    return added


def _shift(keys: IntArray) -> np.uint64:
    return np.uint64(64 - (keys.shape[0].bit_length() - 1))


class HashedKeyTable:
    """Non-negative ``int64`` keys with ``width`` float columns, in an open-addressing hash table."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.keys: IntArray = np.full(1 << _MIN_BITS, _EMPTY, dtype=np.int64)
        self.values: FloatArray = np.zeros((1 << _MIN_BITS, width), dtype=np.float64)
        self.count = 0

    @classmethod
    def from_items(cls, width: int, keys: IntArray, values: FloatArray) -> HashedKeyTable:
        """A table holding ``keys`` (unique) and their ``values``."""
        table = cls(width)
        table.put(keys, values)
        return table

    @property
    def shift(self) -> np.uint64:
        """Right shift that turns a 64-bit hash into a slot number."""
        return _shift(self.keys)

    def __len__(self) -> int:
        return self.count

    def reserve(self, more: int) -> None:
        """Make room for ``more`` new keys while staying at most half full."""
        wanted = 2 * (self.count + more)
        if wanted <= self.keys.shape[0]:
            return
        size = self.keys.shape[0]
        while size < wanted:
            size *= 2
        self._rebuild(size, *self._used())

    def _used(self) -> tuple[IntArray, FloatArray]:
        used = np.flatnonzero(self.keys != _EMPTY)
        return self.keys[used], self.values[used]

    def _rebuild(self, size: int, keys: IntArray, values: FloatArray) -> None:
        self.keys = np.full(size, _EMPTY, dtype=np.int64)
        self.values = np.zeros((size, self.width), dtype=np.float64)
        self.count = _put(self.keys, self.values, self.shift, keys, np.ascontiguousarray(values))

    def get(self, query: IntArray, default: float = np.nan) -> tuple[npt.NDArray[np.bool_], FloatArray]:
        """Presence of each query key and its values (``default`` where absent)."""
        out = np.full((query.shape[0], self.width), default, dtype=np.float64)
        found: npt.NDArray[np.bool_] = _get(self.keys, self.values, self.shift,
                                            np.ascontiguousarray(query, dtype=np.int64), out)
        return found, out

    def put(self, keys: IntArray, values: FloatArray) -> None:
        """Insert or overwrite ``keys`` (unique) with ``values``."""
        self.reserve(keys.shape[0])
        self.count += _put(self.keys, self.values, self.shift, np.ascontiguousarray(keys, dtype=np.int64),
                           np.ascontiguousarray(values, dtype=np.float64))

    def items(self) -> tuple[IntArray, FloatArray]:
        """All keys (sorted) and their values."""
        keys, values = self._used()
        order = np.argsort(keys, kind="stable")
        return keys[order], values[order]

    def keys_any_order(self) -> IntArray:
        """All keys, in table order."""
        keys: IntArray = self.keys[self.keys != _EMPTY]
        return keys

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        """Keep only the entries where ``mask`` (aligned with :meth:`items`) is true."""
        keys, values = self.items()
        self._refill(keys[mask], values[mask])

    def drop(self, keys: IntArray) -> None:
        """Remove ``keys`` (held keys); the rest are put back in table order, unsorted."""
        # Emptied in place (which would break the probe chains), then every other entry is put back afresh.
        self.keys[_slots(self.keys, self.shift, np.ascontiguousarray(keys, dtype=np.int64))] = _EMPTY
        self._refill(*self._used())

    def _refill(self, keys: IntArray, values: FloatArray) -> None:
        size = 1 << _MIN_BITS
        while size < 2 * keys.shape[0]:
            size *= 2
        self._rebuild(size, keys, values)
