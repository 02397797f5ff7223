"""Host ids in a keyed open-addressing hash table probed by compiled passes (internal; ADR 0711).

:class:`HashedHostTable` holds what :class:`._hosts.DictHostTable` holds,
address -> id, without a Python string per host: each id's address as its
code points (a row of a ``uint32`` array, zero-padded), its 64-bit hash,
and a power-of-two slot array (at most half full, linear probing) from hash
to id. A batch's addresses are read as the code points NumPy stores them in,
looked up and numbered in one compiled pass.

The addresses are chosen by whoever sends the traffic, so the hash is keyed:
a multilinear hash of the code points with 65 random 64-bit words drawn per
table from the operating system (for two addresses fixed in advance, their
hashes collide with probability at most 2^-32 over the key), then a fixed
64-bit mixer (a bijection) before the top bits pick the slot. Without the
key nobody can choose addresses that share slots and build long probe
chains. A hash match is only a hint: two addresses are the same host only if
all their code points are equal.

Imports Numba; only the compiled path builds this table.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import numpy.typing as npt

from iotguard.detection._hosts import MAX_HOST_WIDTH, HostLookup, HostTable
from iotguard.errors import MalformedError

__all__ = ["HashedHostTable"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Codes = npt.NDArray[np.uint32]
_EMPTY = -1
_MIN_BITS = 12


@numba.njit(cache=False, nogil=True, inline="always")
def _hash(codes: Codes, i: int, key: npt.NDArray[np.uint64]) -> np.uint64:  # pragma: no cover - compiled
    """Keyed hash of row ``i`` of ``codes``: multilinear over the code points, then murmur3's 64-bit finaliser."""
    h: np.uint64 = key[0]
    for c in range(codes.shape[1]):
        h += key[c + 1] * np.uint64(codes[i, c])
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@numba.njit(cache=False, nogil=True, inline="always")
def _same(codes: Codes, i: int, names: Codes, s: int) -> bool:  # pragma: no cover - compiled
    """Whether row ``i`` of ``codes`` is the address of id ``s`` (zero-padded to ``names``' width).

    Every code point is compared, without an early exit: the loop then compiles to vector instructions.
    """
    width = codes.shape[1]
    diff = np.uint32(0)
    for c in range(width):
        diff |= codes[i, c] ^ names[s, c]
    for c in range(width, names.shape[1]):
        diff |= names[s, c]
    return bool(diff == 0)


@numba.njit(cache=False, nogil=True)
def _find(slots: IntArray, shift: np.uint64, hashes: npt.NDArray[np.uint64], names: Codes, key: npt.NDArray[np.uint64],
          codes: Codes, times: FloatArray) -> tuple[IntArray, IntArray, IntArray, FloatArray]:  # pragma: no cover
    """:meth:`HashedHostTable.find` (the addresses not held are numbered in a table of the batch's own)."""
    n = codes.shape[0]
    mask = slots.shape[0] - 1
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    local = np.full(1 << bits, -1, dtype=np.int64)
    local_mask = (1 << bits) - 1
    local_shift = np.uint64(64 - bits)
    local_hash = np.empty(n, dtype=np.uint64)
    found = np.empty(n, dtype=np.int64)
    new_of_row = np.full(n, -1, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    earliest = np.empty(n)
    count = 0
    for i in range(n):
        if i and _same(codes, i, codes, i - 1):  # a host's flows often come in runs: as the row before
            found[i] = found[i - 1]
            k = new_of_row[i] = new_of_row[i - 1]
            if k >= 0:
                earliest[k] = min(earliest[k], times[i])
            continue
        h = _hash(codes, i, key)
        j = np.int64(h >> shift)
        found[i] = -1
        while True:
            s = slots[j]
            if s == _EMPTY:
                break
            if hashes[s] == h and _same(codes, i, names, s):
                found[i] = s
                break
            j = (j + 1) & mask
        if found[i] >= 0:
            continue
        j = np.int64(h >> local_shift)
        while True:
            k = local[j]
            if k == _EMPTY:
                local[j] = count
                local_hash[count] = h
                first[count] = i
                earliest[count] = times[i]
                new_of_row[i] = count
                count += 1
                break
            if local_hash[k] == h and _same(codes, i, codes, first[k]):
                new_of_row[i] = k
                earliest[k] = min(earliest[k], times[i])
                break
            j = (j + 1) & local_mask
    return found, first[:count].copy(), new_of_row, earliest[:count].copy()


@numba.njit(cache=False, nogil=True)
def _number(slots: IntArray, shift: np.uint64, hashes: npt.NDArray[np.uint64], names: Codes,
            key: npt.NDArray[np.uint64], codes: Codes, times: FloatArray, free: IntArray, top: int,
            stamp: IntArray, position: IntArray,
            serial: int) -> tuple[IntArray, IntArray, FloatArray, int]:  # pragma: no cover - compiled
    """:meth:`HashedHostTable.number`: a new address takes the next id as it is met and is held at once.

    ``stamp`` / ``position`` (per id) mark the ids given out in this call (``serial``) and their place among
    the new ones, so a later row of a new host updates its earliest time. There is room for every row.
    """
    n = codes.shape[0]
    mask = slots.shape[0] - 1
    width = codes.shape[1]
    found = np.empty(n, dtype=np.int64)
    new_ids = np.empty(n, dtype=np.int64)
    earliest = np.empty(n)
    count = 0
    popped = 0
    for i in range(n):
        if i and _same(codes, i, codes, i - 1):  # a host's flows often come in runs: as the row before
            s = found[i - 1]
        else:
            h = _hash(codes, i, key)
            j = np.int64(h >> shift)
            s = -1
            while True:
                e = slots[j]
                if e == _EMPTY:
                    break
                if hashes[e] == h and _same(codes, i, names, e):
                    s = e
                    break
                j = (j + 1) & mask
            if s < 0:  # new: the last freed id first, else the next unused one; held at the empty slot found
                if popped < free.shape[0]:
                    s = free[free.shape[0] - 1 - popped]
                    popped += 1
                else:
                    s = top
                    top += 1
                for c in range(width):
                    names[s, c] = codes[i, c]
                for c in range(width, names.shape[1]):
                    names[s, c] = 0
                hashes[s] = h
                slots[j] = s
                stamp[s] = serial
                position[s] = count
                new_ids[count] = s
                earliest[count] = times[i]
                count += 1
        found[i] = s
        if stamp[s] == serial:
            k = position[s]
            earliest[k] = min(earliest[k], times[i])
    return found, new_ids[:count].copy(), earliest[:count].copy(), popped


@numba.njit(cache=False, nogil=True)
def _insert(slots: IntArray, shift: np.uint64, hashes: npt.NDArray[np.uint64], names: Codes,
            key: npt.NDArray[np.uint64], codes: Codes, rows: IntArray,
            ids: IntArray) -> None:  # pragma: no cover - compiled
    """Hold ``codes[rows]`` (not held, distinct) as ``ids``; the slot array has room."""
    mask = slots.shape[0] - 1
    width = codes.shape[1]
    for k in range(rows.shape[0]):
        i, s = rows[k], ids[k]
        h = _hash(codes, i, key)
        for c in range(width):
            names[s, c] = codes[i, c]
        for c in range(width, names.shape[1]):
            names[s, c] = 0
        hashes[s] = h
        j = np.int64(h >> shift)
        while slots[j] != _EMPTY:
            j = (j + 1) & mask
        slots[j] = s


@numba.njit(cache=False, nogil=True)
def _rehash(slots: IntArray, shift: np.uint64, hashes: npt.NDArray[np.uint64],
            ids: IntArray) -> None:  # pragma: no cover - compiled
    """Put ``ids`` (held, by their stored hashes) into the empty slot array ``slots``."""
    mask = slots.shape[0] - 1
    for k in range(ids.shape[0]):
        s = ids[k]
        j = np.int64(hashes[s] >> shift)
        while slots[j] != _EMPTY:
            j = (j + 1) & mask
        slots[j] = s


def _shift(slots: IntArray) -> np.uint64:
    """Right shift that turns a 64-bit hash into a slot number of ``slots`` (a power of two long)."""
    return np.uint64(64 - (slots.shape[0].bit_length() - 1))


class HashedHostTable:
    """Address <-> id in a keyed hash table (see the module docstring); the interface of :class:`._hosts.HostTable`."""

    def __init__(self) -> None:
        self._key = np.frombuffer(os.urandom(8 * (MAX_HOST_WIDTH + 1)), dtype=np.uint64).copy()
        self._slots: IntArray = np.full(1 << _MIN_BITS, _EMPTY, dtype=np.int64)
        self._hashes: npt.NDArray[np.uint64] = np.zeros(1024, dtype=np.uint64)
        # Wide enough for an IPv4 address; widened to the widest batch (at most MAX_HOST_WIDTH) when one comes.
        self._names: Codes = np.zeros((1024, 16), dtype=np.uint32)
        self._count = 0
        # Scratch per id for number(): which call gave the id out, and its place among that call's new ids.
        self._stamp: IntArray = np.zeros(1024, dtype=np.int64)
        self._position: IntArray = np.zeros(1024, dtype=np.int64)
        self._serial = 0

    @classmethod
    def from_table(cls, other: HostTable) -> HashedHostTable:
        """A table holding what ``other`` holds, with the same ids."""
        table = cls()
        ids = other.ids()
        if ids.shape[0]:
            table.add(ids, np.array(other.names_of(ids), dtype=np.str_), np.arange(ids.shape[0], dtype=np.int64))
        return table

    def __len__(self) -> int:
        return self._count

    def _codes(self, hosts: npt.NDArray[np.str_]) -> Codes:
        """The code points of ``hosts`` (one row each), the table widened to them if they are wider."""
        width = max(1, hosts.dtype.itemsize // 4)
        if hosts.dtype.itemsize == 0:
            codes: Codes = np.zeros((hosts.shape[0], 1), dtype=np.uint32)
        else:
            codes = np.ascontiguousarray(hosts).view(np.uint32).reshape(hosts.shape[0], width)
        if width > MAX_HOST_WIDTH:  # names within the limit in a wider array; a longer one would be cut short
            if codes[:, MAX_HOST_WIDTH:].any():
                raise MalformedError("address too long", code="flow_bad_address")
            codes = np.ascontiguousarray(codes[:, :MAX_HOST_WIDTH])
            width = MAX_HOST_WIDTH
        if width > self._names.shape[1]:
            self._names = np.pad(self._names, ((0, 0), (0, width - self._names.shape[1])))
        return codes

    def find(self, hosts: npt.NDArray[np.str_], times: FloatArray) -> HostLookup:
        """Each row's id; the addresses not held numbered by first appearance (not added)."""
        codes = self._codes(hosts)  # first: it may widen the names
        return HostLookup(*_find(self._slots, _shift(self._slots), self._hashes, self._names, self._key, codes,
                                 np.ascontiguousarray(times, dtype=np.float64)))

    def number(self, hosts: npt.NDArray[np.str_], times: FloatArray, free: IntArray,
               top: int) -> tuple[IntArray, IntArray, FloatArray, int]:
        """:meth:`._hosts.DictHostTable.number` in one compiled pass."""
        codes = self._codes(hosts)  # first: it may widen the names
        n = codes.shape[0]
        self._reserve(top + max(0, n - free.shape[0]), self._count + n)
        self._serial += 1
        found, ids, earliest, popped = _number(
            self._slots, _shift(self._slots), self._hashes, self._names, self._key, codes,
            np.ascontiguousarray(times, dtype=np.float64), np.ascontiguousarray(free, dtype=np.int64), top,
            self._stamp, self._position, self._serial)
        self._count += ids.shape[0]
        return found, ids, earliest, popped

    def _reserve(self, ids: int, count: int) -> None:
        """Room for ids below ``ids`` and for ``count`` addresses in the slot array (at most half full)."""
        if ids > self._hashes.shape[0]:
            size = max(ids, 2 * self._hashes.shape[0])
            more = size - self._hashes.shape[0]
            self._hashes = np.concatenate([self._hashes, np.zeros(more, dtype=np.uint64)])
            self._names = np.concatenate([self._names, np.zeros((more, self._names.shape[1]), dtype=np.uint32)])
            self._stamp = np.concatenate([self._stamp, np.zeros(more, dtype=np.int64)])
            self._position = np.concatenate([self._position, np.zeros(more, dtype=np.int64)])
        if 2 * count > self._slots.shape[0]:
            size = self._slots.shape[0]
            while size < 2 * count:
                size *= 2
            self._rebuild(size, self._slots[self._slots != _EMPTY])

    def add(self, ids: IntArray, hosts: npt.NDArray[np.str_], rows: IntArray) -> None:
        """Hold ``hosts[rows]`` (addresses not held, distinct) as ``ids`` (free ids)."""
        if ids.shape[0] == 0:
            return
        codes = self._codes(hosts)
        self._reserve(int(ids.max()) + 1, self._count + ids.shape[0])
        self._count += ids.shape[0]
        _insert(self._slots, _shift(self._slots), self._hashes, self._names, self._key, codes,
                np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(ids, dtype=np.int64))

    def _rebuild(self, size: int, ids: IntArray) -> None:
        self._slots = np.full(size, _EMPTY, dtype=np.int64)
        _rehash(self._slots, _shift(self._slots), self._hashes, ids)

    def get(self, host: str) -> int:
        """The id of ``host``, -1 if not held."""
        found = self.find(np.array([host], dtype=np.str_), np.zeros(1)).found
        return int(found[0])

    def names_of(self, ids: IntArray) -> list[str]:
        """The addresses of ``ids`` (held ids)."""
        names: list[str] = np.ascontiguousarray(self._names[ids]).view(f"<U{self._names.shape[1]}")[:, 0].tolist()
        return names

    def ids(self) -> IntArray:
        """Every id held (in the slot array), sorted."""
        return np.sort(self._slots[self._slots != _EMPTY])

    def remove(self, ids: IntArray) -> None:
        """Stop holding ``ids``."""
        if ids.shape[0] == 0:
            return
        left = np.setdiff1d(self.ids(), ids)
        self._names[ids] = 0
        self._count = int(left.shape[0])
        self._rebuild(self._slots.shape[0], left)
