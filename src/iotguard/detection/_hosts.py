"""The feature extractor's host numbering: address string <-> host id (internal).

A :class:`HostTable` numbers the addresses the extractor holds state for.
:meth:`HostTable.number` gives each row its host's id, adding the addresses
it does not hold as they are met (freed ids first). When a batch may not
fit, :meth:`HostTable.find` first numbers the new addresses without adding
them, so the extractor can make room (eviction). :class:`DictHostTable` keeps a Python dict
(the NumPy path's table and the reference); the compiled path's
:class:`._hashed_hosts.HashedHostTable` keeps the same mapping in a keyed
hash table that a compiled pass probes (ADR 0711). Both pass one contract test.
"""

from __future__ import annotations

from itertools import repeat
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from iotguard.errors import MalformedError

__all__ = ["MAX_HOST_WIDTH", "DictHostTable", "HostLookup", "HostTable", "check_width"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
#: Longest host address in code points (a :class:`~iotguard.detection.flows.Flow`'s and a Zeek log's limit).
MAX_HOST_WIDTH = 64


class HostLookup(NamedTuple):
    """What :meth:`HostTable.find` returns for a batch's addresses.

    Attributes:
        found: Per row, the host's id, or -1 if the table does not hold it.
        first: Per address not held (in order of first appearance), its first row.
        new_of_row: Per row, the index into ``first`` of its address if not held, else -1.
        earliest: Per address not held, the earliest of its rows' times.
    """

    found: IntArray
    first: IntArray
    new_of_row: IntArray
    earliest: FloatArray


class HostTable(Protocol):
    """Address <-> id of the hosts with state: :class:`DictHostTable` or the kernel's ``HashedHostTable``."""

    def __len__(self) -> int: ...

    def find(self, hosts: npt.NDArray[np.str_], times: FloatArray) -> HostLookup: ...

    def add(self, ids: IntArray, hosts: npt.NDArray[np.str_], rows: IntArray) -> None: ...

    def number(self, hosts: npt.NDArray[np.str_], times: FloatArray, free: IntArray,
               top: int) -> tuple[IntArray, IntArray, FloatArray, int]: ...

    def get(self, host: str) -> int: ...

    def names_of(self, ids: IntArray) -> list[str]: ...

    def ids(self) -> IntArray: ...

    def remove(self, ids: IntArray) -> None: ...


def check_width(hosts: npt.NDArray[np.str_]) -> None:
    """Refuse addresses longer than :data:`MAX_HOST_WIDTH` (batches built by hand; parsers refuse them first).

    Raises:
        MalformedError: ``flow_bad_address``.
    """
    if hosts.dtype.itemsize > 4 * MAX_HOST_WIDTH and hosts.shape[0] and \
            int(np.char.str_len(hosts).max()) > MAX_HOST_WIDTH:
        raise MalformedError("address too long", code="flow_bad_address")


class DictHostTable:
    """Host ids in a Python dict keyed by address."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def find(self, hosts: npt.NDArray[np.str_], times: FloatArray) -> HostLookup:
        """Each row's id; the addresses not held numbered by first appearance (not added)."""
        names = hosts.tolist()
        found = np.fromiter(map(self._ids.get, names, repeat(-1)), dtype=np.int64, count=len(names))
        missing = np.flatnonzero(found < 0)
        new_of_row = np.full(len(names), -1, dtype=np.int64)
        if missing.shape[0] == 0:
            return HostLookup(found, np.zeros(0, dtype=np.int64), new_of_row, np.zeros(0))
        position: dict[str, int] = {}
        first: list[int] = []
        for row in missing.tolist():
            k = position.setdefault(names[row], len(first))
            if k == len(first):
                first.append(row)
            new_of_row[row] = k
        earliest = np.full(len(first), np.inf)
        np.minimum.at(earliest, new_of_row[missing], times[missing])
        return HostLookup(found, np.array(first, dtype=np.int64), new_of_row, earliest)

    def add(self, ids: IntArray, hosts: npt.NDArray[np.str_], rows: IntArray) -> None:
        """Hold ``hosts[rows]`` (addresses not held, distinct) as ``ids`` (free ids)."""
        names = hosts[rows].tolist()
        self._ids.update(zip(names, ids.tolist(), strict=True))
        self._names.update(zip(ids.tolist(), names, strict=True))

    def number(self, hosts: npt.NDArray[np.str_], times: FloatArray, free: IntArray,
               top: int) -> tuple[IntArray, IntArray, FloatArray, int]:
        """Each row's id, the addresses not held added as they are met (for a batch that needs no eviction).

        A new address takes the last of ``free`` not yet taken, else the next id from ``top`` on. Returns the
        ids, the new ids in order, each new host's earliest time and how many of ``free`` were taken.
        """
        found, first, new_of_row, earliest = self.find(hosts, times)
        popped = min(first.shape[0], free.shape[0])
        ids = np.concatenate([free[::-1][:popped], np.arange(top, top + first.shape[0] - popped)]).astype(np.int64)
        if first.shape[0]:
            self.add(ids, hosts, first)
            found = np.where(new_of_row >= 0, ids[new_of_row], found)
        return found, ids, earliest, popped

    def get(self, host: str) -> int:
        """The id of ``host``, -1 if not held."""
        return self._ids.get(host, -1)

    def names_of(self, ids: IntArray) -> list[str]:
        """The addresses of ``ids`` (held ids)."""
        return [self._names[i] for i in ids.tolist()]

    def ids(self) -> IntArray:
        """Every id held, sorted."""
        return np.array(sorted(self._names), dtype=np.int64)

    def remove(self, ids: IntArray) -> None:
        """Stop holding ``ids``."""
        for i in ids.tolist():
            del self._ids[self._names.pop(i)]
