"""Bounded integer-keyed tables for per-host and per-channel state (internal).

A table holds sorted ``int64`` keys with parallel ``float64`` value columns.
Lookups are vectorised binary searches. New keys go to a small sorted delta
that is merged into the main run when it grows past an eighth of it, so an
insert costs amortised O(log n) rather than a copy of the whole table.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class StateTable(Protocol):
    """What the extractor needs of a table: :class:`KeyTable` or the kernel's ``HashedKeyTable``."""

    width: int

    def __len__(self) -> int: ...

    def get(self, query: IntArray, default: float = np.nan) -> tuple[npt.NDArray[np.bool_], FloatArray]: ...

    def put(self, keys: IntArray, values: FloatArray) -> None: ...

    def items(self) -> tuple[IntArray, FloatArray]: ...

    def keys_any_order(self) -> IntArray: ...

    def keep(self, mask: npt.NDArray[np.bool_]) -> None: ...

    def drop(self, keys: IntArray) -> None: ...


class KeyTable:
    """Sorted keys with ``width`` float columns."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._keys: IntArray = np.empty(0, dtype=np.int64)
        self._values: FloatArray = np.empty((0, width), dtype=np.float64)
        self._dkeys: IntArray = np.empty(0, dtype=np.int64)
        self._dvalues: FloatArray = np.empty((0, width), dtype=np.float64)

    def __len__(self) -> int:
        return int(self._keys.shape[0] + self._dkeys.shape[0])

    @staticmethod
    def _find(keys: IntArray, query: IntArray) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        pos = np.searchsorted(keys, query)
        clipped = np.minimum(pos, max(keys.shape[0] - 1, 0))
        found = (pos < keys.shape[0]) & (keys[clipped] == query) if keys.shape[0] else np.zeros(query.shape, bool)
        return found, clipped

    def get(self, query: IntArray, default: float = np.nan) -> tuple[npt.NDArray[np.bool_], FloatArray]:
        """Presence of each query key and its values (``default`` where absent)."""
        out = np.full((query.shape[0], self.width), default, dtype=np.float64)
        found_m, idx_m = self._find(self._keys, query)
        out[found_m] = self._values[idx_m[found_m]]
        found_d, idx_d = self._find(self._dkeys, query)
        out[found_d] = self._dvalues[idx_d[found_d]]
        return found_m | found_d, out

    def put(self, keys: IntArray, values: FloatArray) -> None:
        """Insert or overwrite ``keys`` (unique) with ``values``."""
        found_m, idx_m = self._find(self._keys, keys)
        self._values[idx_m[found_m]] = values[found_m]
        rest = ~found_m
        keys, values = keys[rest], values[rest]
        found_d, idx_d = self._find(self._dkeys, keys)
        self._dvalues[idx_d[found_d]] = values[found_d]
        new = ~found_d
        if new.any():
            dkeys = np.concatenate([self._dkeys, keys[new]])
            order = np.argsort(dkeys, kind="stable")
            self._dkeys = dkeys[order]
            self._dvalues = np.concatenate([self._dvalues, values[new]])[order]
        if self._dkeys.shape[0] > max(1024, self._keys.shape[0] // 8):
            self._merge()

    def _merge(self) -> None:
        keys = np.concatenate([self._keys, self._dkeys])
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._values = np.concatenate([self._values, self._dvalues])[order]
        self._dkeys = np.empty(0, dtype=np.int64)
        self._dvalues = np.empty((0, self.width), dtype=np.float64)

    def items(self) -> tuple[IntArray, FloatArray]:
        """All keys (sorted) and their values."""
        self._merge()
        return self._keys, self._values

    def keys_any_order(self) -> IntArray:
        """All keys, in no particular order (no merge)."""
        return np.concatenate([self._keys, self._dkeys])

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        """Keep only the entries where ``mask`` (aligned with :meth:`items`) is true."""
        self._merge()
        self._keys = self._keys[mask]
        self._values = self._values[mask]

    def drop(self, keys: IntArray) -> None:
        """Remove ``keys`` (held keys)."""
        self.keep(~np.isin(self.items()[0], keys))
