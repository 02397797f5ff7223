"""Wrapped data keys in memory, for unit tests (passes the same contract as the SQL store)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from iotguard.hub.stores.data_keys import DataKeyConflict, DataKeyRow

__all__ = ["MemoryDataKeyStore"]


class _Tx:
    """Changes of one transaction, applied at commit (none on rollback)."""

    def __init__(self) -> None:
        self.added: dict[str, DataKeyRow] = {}
        self.deleted: set[str] = set()


class MemoryDataKeyStore:
    """:class:`~iotguard.hub.stores.data_keys.DataKeyStore` in memory.

    A transaction holds the store's lock until it ends, so a shred and a seal never interleave
    (what ``FOR UPDATE`` / ``FOR SHARE`` give the SQL store); its writes apply only on commit.
    """

    def __init__(self) -> None:
        self._rows: dict[str, DataKeyRow] = {}
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        with self._lock:
            tx = _Tx()
            yield tx
            for owner in tx.deleted:
                self._rows.pop(owner, None)
            self._rows.update(tx.added)

    def _view(self, tx: _Tx) -> dict[str, DataKeyRow]:
        rows = {o: r for o, r in self._rows.items() if o not in tx.deleted}
        rows.update(tx.added)
        return rows

    def rows_for(self, tx: _Tx, owners: Sequence[str]) -> list[DataKeyRow]:
        view = self._view(tx)
        return [view[o] for o in sorted(set(owners)) if o in view]

    def insert(self, tx: _Tx, row: DataKeyRow) -> None:
        view = self._view(tx)
        if row.owner in view or any(r.key_id == row.key_id for r in view.values()):
            raise DataKeyConflict("a data key for this owner or key id exists")
        tx.added[row.owner] = row

    def lock_owners(self, tx: _Tx, owners: Sequence[str]) -> list[bytes]:
        return [r.key_id for r in self.rows_for(tx, owners)]

    def delete_owners(self, tx: _Tx, owners: Sequence[str]) -> int:
        gone = [o for o in set(owners) if o in self._view(tx)]
        for o in gone:
            tx.added.pop(o, None)
            tx.deleted.add(o)
        return len(gone)

    def row_by_id(self, key_id: bytes) -> DataKeyRow | None:
        with self._lock:
            return next((r for r in self._rows.values() if r.key_id == key_id), None)

    def row_by_owner(self, owner: str) -> DataKeyRow | None:
        with self._lock:
            return self._rows.get(owner)

    def count(self) -> int:
        with self._lock:
            return len(self._rows)
