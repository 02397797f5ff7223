"""Telemetry's tables: readings, rejection counts, replay windows (ingest state).

Only this module writes them: erasure, retention and re-provisioning ask the
telemetry store. :class:`TelemetryStore` is the interface; the SQL store
serves SQLite and PostgreSQL and :class:`MemoryTelemetryStore` unit tests;
both pass ``tests/hub/test_stores.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from iotguard.channel import ReplayWindow
from iotguard.errors import IntegrityError, KeyStoreError, StorageError
from iotguard.hub.db import driver_error_summary
from iotguard.hub.schema import readings, rejections, replay_windows
from iotguard.hub.stores._sql import SqlStoreBase
from iotguard.hub.stores._sql import aware as _aware

__all__ = ["MemoryTelemetryStore", "ReadingCipher", "SqlTelemetryStore", "StoredReading", "SubjectKeyUnavailable",
           "TelemetryStore", "forget_replay_state"]

log = logging.getLogger(__name__)

_READING_COLUMNS = ("device_id", "epoch", "seq", "topic", "received_at", "body", "key_id")
_DELETE_CHUNK = 500


class SubjectKeyUnavailable(StorageError):
    """A batch was not stored because a data subject's key could not be used (its wrapping key is
    missing from the key store, or the wrapped key was altered), not because of the database: retrying
    the same batch cannot succeed, so ingest stores its messages one by one and refuses those."""


@dataclass(frozen=True)
class StoredReading:
    """One stored reading; ``body`` is the clear body, or ``b""`` when ``sealed`` (its data key is
    shredded or this store has no cipher to open it)."""

    id: int
    device_id: str
    epoch: int
    seq: int
    topic: str
    received_at: datetime
    body: bytes
    sealed: bool = False


class ReadingCipher(Protocol):
    """Envelope encryption of reading bodies under their owner's data key (ADR 0405)."""

    def seal_readings(self, conn: Connection, rows: Sequence[dict[str, Any]], at: datetime) -> list[dict[str, Any]]:
        """The rows with ``body`` sealed and ``key_id`` set, inside the storing transaction."""
        ...

    def open_reading(self, key_id: bytes, device_id: str, epoch: int, seq: int, sealed: bytes) -> bytes:
        """Raises KeyStoreError (key shredded) or IntegrityError (altered, moved)."""
        ...


@dataclass
class WindowWrite:
    """One replay window to save with a batch, compare-and-swap on its version.

    ``version`` is the version this process last read or wrote (``None``: no
    row known). When another hub process saved the window meanwhile, the store
    merges the saved window into :attr:`window` (the union refuses whatever
    either process accepted) and saves that; either way :attr:`version` is set
    to the saved row's new version. Both fields are updated in place.
    """

    device_id: str
    epoch: int
    window: ReplayWindow
    version: int | None


class _SomeAlreadyStored(Exception):
    """Internal: a fast-path insert found rows that already exist (the transaction is rolled back)."""


def forget_replay_state(conn: Connection, device_id: str) -> None:
    """Delete a device's replay windows inside the caller's transaction (re-provisioning, decommissioning)."""
    conn.execute(delete(replay_windows).where(replay_windows.c.device_id == device_id))


class TelemetryStore(Protocol):
    """Stored readings, rejection counts and replay windows."""

    def store_batch(self, rows: Sequence[dict[str, Any]], windows: Sequence[WindowWrite],
                    rejected: dict[tuple[str, str], int], *, now: datetime) -> set[tuple[str, int, int]]:
        """Store readings, replay windows (compare-and-swap, merged on conflict) and rejection counts
        atomically; returns the keys inserted."""
        ...

    def replay_window(self, device_id: str, epoch: int) -> tuple[int, bytes, int] | None:
        """The saved window of (device, epoch): top, bitmap and version."""
        ...

    def replay_windows(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, bytes, int]]:
        """The saved windows of many (device, epoch) at once (absent ones are left out): one round trip
        for a batch's devices seen for the first time, instead of one each."""
        ...

    def count_rejections(self, rejected: dict[tuple[str, str], int], *, now: datetime) -> None: ...

    def rejection_totals(self) -> dict[str, int]: ...

    def reading_count(self, device_id: str | None = None) -> int: ...

    def readings_after(self, after_id: int = 0, *, device_id: str | None = None,
                       limit: int = 1000) -> list[StoredReading]: ...

    def last_reading_id(self) -> int: ...

    def readings_of(self, device_ids: Sequence[str]) -> list[StoredReading]:
        """Every reading of the given devices, oldest first (a data subject's access request)."""
        ...

    def readings_received_before(self, horizon: datetime) -> list[StoredReading]:
        """Readings received before ``horizon`` (retention candidates)."""
        ...

    def delete_readings(self, ids: Sequence[int]) -> int:
        """Delete readings by id (retention); returns how many."""
        ...

    def delete_readings_of(self, device_ids: Sequence[str], *, conn: Any = None) -> int:
        """Delete every reading of the given devices (erasure), in ``conn``'s transaction when given."""
        ...


class SqlTelemetryStore(SqlStoreBase):
    """Telemetry on SQLite or PostgreSQL."""

    _insert_sql: tuple[str, list[str] | None] | None = None
    #: Seals bodies at rest; ``None`` stores them clear (unit tests and tools without the hub key store only:
    #: :func:`iotguard.hub.compose.build_hub_services` always sets it).
    cipher: ReadingCipher | None = None

    def __init__(self, engine: Engine, *, cipher: ReadingCipher | None = None) -> None:
        self._bind(engine)
        self.cipher = cipher

    def replay_window(self, device_id: str, epoch: int) -> tuple[int, bytes, int] | None:
        with self.engine.connect() as c:
            row = c.execute(select(replay_windows.c.top, replay_windows.c.bitmap, replay_windows.c.version).where(
                and_(replay_windows.c.device_id == device_id, replay_windows.c.epoch == epoch))).first()
        return None if row is None else (int(row[0]), bytes(row[1]), int(row[2]))

    def replay_windows(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, bytes, int]]:
        wanted = set(keys)
        t = replay_windows
        out: dict[tuple[str, int], tuple[int, bytes, int]] = {}
        devices = sorted({d for d, _e in wanted})
        with self.engine.connect() as c:
            for i in range(0, len(devices), 1000):
                rows = c.execute(select(t.c.device_id, t.c.epoch, t.c.top, t.c.bitmap, t.c.version)
                                 .where(t.c.device_id.in_(devices[i:i + 1000]))).all()
                for d, e, top, bitmap, version in rows:
                    if (str(d), int(e)) in wanted:
                        out[(str(d), int(e))] = (int(top), bytes(bitmap), int(version))
        return out

    # -- ingest ----------------------------------------------------------

    def store_batch(
        self,
        rows: Sequence[dict[str, Any]],
        windows: Sequence[WindowWrite],
        rejected: dict[tuple[str, str], int],
        *,
        now: datetime,
    ) -> set[tuple[str, int, int]]:
        """Durably store a batch in one transaction.

        Args:
            rows: Readings (``device_id, epoch, seq, topic, received_at, body``).
            windows: Replay windows to persist, compare-and-swap on their version
                (see :class:`WindowWrite`; updated in place once committed).
            rejected: Rejection counts per (device_id, reason).

        Returns:
            The (device_id, epoch, seq) keys actually inserted; a key missing
            from it was already stored (by a concurrent hub) and is a replay.

        Raises:
            StorageError: the transaction failed; nothing was stored.
        """
        try:
            return self._store_batch(rows, windows, rejected, now=now, returning=False)
        except _SomeAlreadyStored:
            # Another hub stored some of these meanwhile (the replay window
            # normally prevents this): redo the batch learning exactly which.
            return self._store_batch(rows, windows, rejected, now=now, returning=True)

    def _store_batch(
        self,
        rows: Sequence[dict[str, Any]],
        windows: Sequence[WindowWrite],
        rejected: dict[tuple[str, str], int],
        *,
        now: datetime,
        returning: bool,
    ) -> set[tuple[str, int, int]]:
        inserted: set[tuple[str, int, int]] = set()
        saved: list[tuple[WindowWrite, ReplayWindow, int]] = []
        try:
            with self.engine.begin() as c:
                if rows and self.cipher is not None:
                    rows = self.cipher.seal_readings(c, rows, now)
                if rows:
                    stmt = self._upsert(readings).on_conflict_do_nothing(index_elements=["device_id", "epoch", "seq"])
                    if returning:
                        stmt = stmt.returning(readings.c.device_id, readings.c.epoch, readings.c.seq)
                        for r in c.execute(stmt, list(rows)):
                            inserted.add((r[0], r[1], r[2]))
                    else:
                        # Fast path: the statement is compiled by SQLAlchemy for this
                        # dialect once; the driver's executemany then binds plain
                        # values (the batch shares one timestamp, converted once).
                        # If every row went in, we know which.
                        if c.exec_driver_sql(*self._fast_insert(rows, now)).rowcount != len(rows):
                            raise _SomeAlreadyStored
                        inserted = {(r["device_id"], r["epoch"], r["seq"]) for r in rows}
                if windows:
                    saved = self._save_windows(c, windows)
                if rejected:
                    self._count_rejections(c, rejected, now)
        except _SomeAlreadyStored:
            raise
        except (KeyStoreError, IntegrityError) as exc:  # sealing under a subject's data key, not the database
            raise SubjectKeyUnavailable(f"batch not stored: a data subject's key is unusable ({exc.code})") from None
        except Exception as exc:  # the driver's errors vary; the batch is retried whole
            raise StorageError(f"batch not stored: {driver_error_summary(exc)}") from None
        for write, merged, version in saved:  # committed: the caller's windows become what is stored
            write.window, write.version = merged, version
        return inserted

    def _save_windows(self, c: Connection, windows: Sequence[WindowWrite]) -> list[tuple[WindowWrite, ReplayWindow,
                                                                                         int]]:
        """Compare-and-swap each window on its version; on a conflict merge the saved one and retry.

        The common case (no other process touched these windows) is one
        executemany per kind of write; only a conflicting window costs a read.
        """
        t = replay_windows
        updates = [w for w in windows if w.version is not None]
        inserts = [w for w in windows if w.version is None]
        conflicted: list[WindowWrite] = []
        if updates:
            stmt = t.update().where(and_(t.c.device_id == bindparam("d"), t.c.epoch == bindparam("e"),
                                         t.c.version == bindparam("v"))).values(
                top=bindparam("t"), bitmap=bindparam("b"), version=bindparam("v") + 1)
            params = [{"d": w.device_id, "e": w.epoch, "v": w.version, "t": w.window.top, "b": w.window.bitmap()}
                      for w in updates]
            if len(params) == 1:
                if c.execute(stmt.returning(t.c.version), params[0]).first() is None:
                    conflicted = updates
            elif c.execute(stmt, params).rowcount != len(params):
                # Which ones lost the race is unknown (or the driver reports no count):
                # redo each under a row lock; merging a window with itself changes nothing.
                conflicted = list(updates)
        if len(inserts) > 1:
            # A batch's devices seen for the first time: one statement, not a round trip each; one
            # another process inserted meanwhile is not returned, and is merged under a row lock.
            ins = self._upsert(t).on_conflict_do_nothing(index_elements=["device_id", "epoch"]).returning(
                t.c.device_id, t.c.epoch)
            params = [{"device_id": w.device_id, "epoch": w.epoch, "top": w.window.top, "bitmap": w.window.bitmap(),
                       "version": 1} for w in inserts]
            done = {(str(d), int(e)) for d, e in c.execute(ins, params)}
            conflicted += [w for w in inserts if (w.device_id, w.epoch) not in done]
        elif inserts:
            ins = self._upsert(t).on_conflict_do_nothing(index_elements=["device_id", "epoch"]).returning(t.c.version)
            for w in inserts:
                if c.execute(ins, {"device_id": w.device_id, "epoch": w.epoch, "top": w.window.top,
                                   "bitmap": w.window.bitmap(), "version": 1}).first() is None:
                    conflicted.append(w)
        lost_race = {id(w) for w in conflicted}
        out = [(w, w.window, (w.version or 0) + 1) for w in windows if id(w) not in lost_race]
        for w in sorted(conflicted, key=lambda w: (w.device_id, w.epoch)):
            out.append((w, *self._merge_window(c, w)))
        return out

    def _merge_window(self, c: Connection, w: WindowWrite) -> tuple[ReplayWindow, int]:
        t = replay_windows
        key = and_(t.c.device_id == w.device_id, t.c.epoch == w.epoch)
        query = select(t.c.top, t.c.bitmap, t.c.version).where(key)
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update()
        row = c.execute(query).first()
        merged = ReplayWindow(w.window.size, w.window.top, w.window.bitmap())
        if row is None:  # forgotten meanwhile (re-provisioned): start the row again
            c.execute(t.insert().values(device_id=w.device_id, epoch=w.epoch, top=merged.top,
                                        bitmap=merged.bitmap(), version=1))
            return merged, 1
        merged.merge(int(row[0]), bytes(row[1]))
        version = int(row[2]) + 1
        c.execute(t.update().where(key).values(top=merged.top, bitmap=merged.bitmap(), version=version))
        return merged, version

    def _fast_insert(self, rows: Sequence[dict[str, Any]], now: datetime) -> tuple[str, Any]:
        if self._insert_sql is None:
            stmt = self._upsert(readings).on_conflict_do_nothing(index_elements=["device_id", "epoch", "seq"])
            compiled = stmt.compile(dialect=self.engine.dialect, column_keys=list(_READING_COLUMNS))
            order = list(compiled.positiontup or []) if compiled.positional else None
            self._insert_sql = (str(compiled), order)
        sql, order = self._insert_sql
        ts_proc = readings.c.received_at.type.dialect_impl(self.engine.dialect).bind_processor(self.engine.dialect)
        received = ts_proc(now) if ts_proc else now
        prepared = [{"device_id": r["device_id"], "epoch": r["epoch"], "seq": r["seq"], "topic": r["topic"],
                     "received_at": received, "body": r["body"], "key_id": r.get("key_id")} for r in rows]
        if order is None:
            return sql, prepared
        return sql, [tuple(p[k] for k in order) for p in prepared]

    def _count_rejections(self, c: Connection, rejected: dict[tuple[str, str], int], now: datetime) -> None:
        ins = self._upsert(rejections)
        c.execute(ins.on_conflict_do_update(
            index_elements=["device_id", "reason"],
            set_={"count": rejections.c.count + ins.excluded.count, "last_at": ins.excluded.last_at}),
            [{"device_id": d, "reason": r, "count": n, "first_at": now, "last_at": now}
             for (d, r), n in rejected.items()])

    def count_rejections(self, rejected: dict[tuple[str, str], int], *, now: datetime) -> None:
        """Add rejection counts outside a batch (e.g. from the API)."""
        if rejected:
            with self.engine.begin() as c:
                self._count_rejections(c, rejected, now)

    def rejection_totals(self) -> dict[str, int]:
        """Rejections per reason code over all devices."""
        with self.engine.connect() as c:
            rows = c.execute(select(rejections.c.reason, func.sum(rejections.c.count))
                             .group_by(rejections.c.reason))
            return {r[0]: int(r[1]) for r in rows}

    def reading_count(self, device_id: str | None = None) -> int:
        q = select(func.count()).select_from(readings)
        if device_id:
            q = q.where(readings.c.device_id == device_id)
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())

    def readings_after(self, after_id: int = 0, *, device_id: str | None = None,
                       limit: int = 1000) -> list[StoredReading]:
        """Readings with id greater than ``after_id``, oldest first."""
        q = select(readings).where(readings.c.id > after_id).order_by(readings.c.id).limit(limit)
        if device_id:
            q = q.where(readings.c.device_id == device_id)
        with self.engine.connect() as c:
            return [self._reading(r) for r in c.execute(q)]

    def last_reading_id(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(func.coalesce(func.max(readings.c.id), 0))).scalar_one())


    def readings_of(self, device_ids: Sequence[str]) -> list[StoredReading]:
        q = select(readings).where(readings.c.device_id.in_(list(device_ids))).order_by(readings.c.id)
        with self.engine.connect() as c:
            return [self._reading(r) for r in c.execute(q)]

    def readings_received_before(self, horizon: datetime) -> list[StoredReading]:
        q = select(readings).where(readings.c.received_at < horizon).order_by(readings.c.id)
        with self.engine.connect() as c:
            return [self._reading(r) for r in c.execute(q)]

    def delete_readings(self, ids: Sequence[int]) -> int:
        deleted = 0
        ids = list(ids)
        for i in range(0, len(ids), _DELETE_CHUNK):  # each chunk one transaction: a rerun finishes the job
            with self.engine.begin() as c:
                chunk = ids[i : i + _DELETE_CHUNK]
                deleted += c.execute(delete(readings).where(readings.c.id.in_(chunk))).rowcount or 0
        return deleted

    def delete_readings_of(self, device_ids: Sequence[str], *, conn: Connection | None = None) -> int:
        stmt = delete(readings).where(readings.c.device_id.in_(list(device_ids)))
        if conn is not None:
            return int(conn.execute(stmt).rowcount or 0)
        with self.engine.begin() as c:
            return int(c.execute(stmt).rowcount or 0)

    def _reading(self, r: Any) -> StoredReading:
        received = _aware(r.received_at) or r.received_at
        if r.key_id is None:
            return StoredReading(r.id, r.device_id, r.epoch, r.seq, r.topic, received, bytes(r.body))
        if self.cipher is None:
            return StoredReading(r.id, r.device_id, r.epoch, r.seq, r.topic, received, b"", sealed=True)
        try:
            body = self.cipher.open_reading(bytes(r.key_id), r.device_id, r.epoch, r.seq, bytes(r.body))
        except (KeyStoreError, IntegrityError) as exc:
            log.warning("reading %d of %s not opened: %s", r.id, r.device_id, exc.code)
            return StoredReading(r.id, r.device_id, r.epoch, r.seq, r.topic, received, b"", sealed=True)
        return StoredReading(r.id, r.device_id, r.epoch, r.seq, r.topic, received, body)

    def clear_reading_count(self) -> int:
        """Readings whose body is still clear (stored before migration 0311)."""
        with self.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(readings)
                                 .where(readings.c.key_id.is_(None))).scalar_one())

    def seal_clear_readings(self, at: datetime, *, limit: int = _DELETE_CHUNK) -> int:
        """Encrypt up to ``limit`` clear bodies in place (the data half of migration 0311); returns how many.

        Each chunk is one transaction; run it until it returns 0. On
        PostgreSQL the old clear row versions stay in the table file until
        ``VACUUM`` reclaims them (docs/privacy.md).

        Raises:
            StorageError: no cipher.
        """
        if self.cipher is None:
            raise StorageError("sealing readings needs the hub key store")
        with self.engine.begin() as c:
            q = select(readings).where(readings.c.key_id.is_(None)).order_by(readings.c.id).limit(limit)
            if self._dialect == "postgresql":
                q = q.with_for_update(skip_locked=True)
            rows = [dict(r._mapping) for r in c.execute(q)]
            if not rows:
                return 0
            for r in self.cipher.seal_readings(c, rows, at):
                c.execute(update(readings).where(readings.c.id == r["id"], readings.c.key_id.is_(None))
                          .values(body=r["body"], key_id=r["key_id"]))
        return len(rows)


class MemoryTelemetryStore:
    """Telemetry in memory (unit tests); ``conn`` arguments are ignored."""

    def __init__(self) -> None:
        self._readings: dict[int, StoredReading] = {}
        self._keys: set[tuple[str, int, int]] = set()
        self._windows: dict[tuple[str, int], tuple[int, bytes, int]] = {}
        self._rejections: dict[tuple[str, str], int] = {}
        self._next = 1
        self._lock = threading.Lock()

    def store_batch(self, rows: Sequence[dict[str, Any]], windows: Sequence[WindowWrite],
                    rejected: dict[tuple[str, str], int], *, now: datetime) -> set[tuple[str, int, int]]:
        inserted: set[tuple[str, int, int]] = set()
        with self._lock:
            for r in rows:
                key = (r["device_id"], r["epoch"], r["seq"])
                if key in self._keys:
                    continue
                self._keys.add(key)
                self._readings[self._next] = StoredReading(self._next, r["device_id"], r["epoch"], r["seq"],
                                                           r["topic"], now, bytes(r["body"]))
                self._next += 1
                inserted.add(key)
            for w in windows:
                saved = self._windows.get((w.device_id, w.epoch))
                if saved is not None and saved[2] != w.version:
                    merged = ReplayWindow(w.window.size, w.window.top, w.window.bitmap())
                    merged.merge(saved[0], saved[1])
                    w.window = merged
                w.version = (saved[2] if saved is not None else 0) + 1
                self._windows[(w.device_id, w.epoch)] = (w.window.top, w.window.bitmap(), w.version)
            for k, n in rejected.items():
                self._rejections[k] = self._rejections.get(k, 0) + n
        return inserted

    def replay_window(self, device_id: str, epoch: int) -> tuple[int, bytes, int] | None:
        return self._windows.get((device_id, epoch))

    def replay_windows(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, bytes, int]]:
        return {k: w for k in keys if (w := self._windows.get(k)) is not None}

    def forget_replay_state(self, device_id: str) -> None:
        with self._lock:
            for key in [k for k in self._windows if k[0] == device_id]:
                del self._windows[key]

    def count_rejections(self, rejected: dict[tuple[str, str], int], *, now: datetime) -> None:
        self.store_batch([], [], rejected, now=now)

    def rejection_totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_d, reason), n in self._rejections.items():
            out[reason] = out.get(reason, 0) + n
        return out

    def reading_count(self, device_id: str | None = None) -> int:
        return sum(1 for r in self._readings.values() if device_id is None or r.device_id == device_id)

    def readings_after(self, after_id: int = 0, *, device_id: str | None = None,
                       limit: int = 1000) -> list[StoredReading]:
        out = [r for i, r in sorted(self._readings.items())
               if i > after_id and (device_id is None or r.device_id == device_id)]
        return out[:limit]

    def last_reading_id(self) -> int:
        return max(self._readings, default=0)

    def readings_of(self, device_ids: Sequence[str]) -> list[StoredReading]:
        wanted = set(device_ids)
        return [r for _i, r in sorted(self._readings.items()) if r.device_id in wanted]

    def readings_received_before(self, horizon: datetime) -> list[StoredReading]:
        return [r for _i, r in sorted(self._readings.items()) if r.received_at < horizon]

    def delete_readings(self, ids: Sequence[int]) -> int:
        with self._lock:
            gone = [self._readings.pop(i) for i in ids if i in self._readings]
            for r in gone:
                self._keys.discard((r.device_id, r.epoch, r.seq))
        return len(gone)

    def delete_readings_of(self, device_ids: Sequence[str], *, conn: Any = None) -> int:
        wanted = set(device_ids)
        return self.delete_readings([i for i, r in self._readings.items() if r.device_id in wanted])
