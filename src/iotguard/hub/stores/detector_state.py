"""Each device's detector state, versioned, shared by every hub process.

Table (migration ``0710_detector_state``): ``detector_state``, one row per
(detector kind, device) holding the detector's bounded state as a strict
CBOR blob (never pickle; the detector parses it with a size limit) and a
version that every write increments. :meth:`DetectorStateStore.save` is a
compare-and-set on that version: a writer that loaded version ``n`` succeeds
only if the row is still at ``n`` (``None``: only if there is no row yet),
otherwise it raises :class:`StateConflict` and the caller reloads and
re-applies its input (ADR 0751). :meth:`DetectorStateStore.save_many` does
the same for several devices' rows of one kind in one transaction: all are
written or none (a flow batch touches every host in it, ADR 0752). :class:`DetectorStateStore` is the
interface; :class:`SqlDetectorStateStore` serves SQLite and PostgreSQL,
:class:`MemoryDetectorStateStore` unit tests; both pass
``tests/hub/test_detector_state_store.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import BigInteger, Column, DateTime, LargeBinary, String, Table, and_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.errors import StorageError
from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import utc

__all__ = [
    "MAX_BLOB_BYTES",
    "DetectorStateStore",
    "MemoryDetectorStateStore",
    "SqlDetectorStateStore",
    "StateConflict",
    "StateWrite",
    "VersionedState",
    "create_detector_state_table",
    "detector_state",
]

#: Device ids per ``IN (...)`` of :meth:`SqlDetectorStateStore.load_many`.
_IN_CHUNK = 500
#: Largest blob the store accepts (every detector's own limit is at most this).
MAX_BLOB_BYTES = 128 * 1024

detector_state = Table(
    "detector_state",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("device_id", String(128), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


def create_detector_state_table(conn: Connection) -> None:
    """Migration ``0710_detector_state``."""
    metadata.create_all(conn, tables=[detector_state])


class StateConflict(StorageError):
    """Another writer changed the state since it was loaded: reload and re-apply."""

    code = "detector_state_conflict"


@dataclass(frozen=True)
class VersionedState:
    """A device's detector state and the version it was stored at (1 for the first write)."""

    body: bytes
    version: int


@dataclass(frozen=True)
class StateWrite:
    """One row of :meth:`DetectorStateStore.save_many`: ``body`` for ``device_id`` if still at ``expected``."""

    device_id: str
    body: bytes
    expected: int | None


def _check(kind: str, device_id: str, body: bytes) -> None:
    if not 0 < len(kind) <= 32 or not 0 < len(device_id) <= 128:
        raise StorageError("detector state key out of range", code="detector_state_bad_key")
    if len(body) > MAX_BLOB_BYTES:
        raise StorageError(f"detector state of {len(body)} bytes, limit {MAX_BLOB_BYTES}",
                           code="detector_state_too_large")


class DetectorStateStore(Protocol):
    def load(self, kind: str, device_id: str) -> VersionedState | None:
        """The stored state (None: never written)."""
        ...

    def save(self, kind: str, device_id: str, body: bytes, expected: int | None, now: datetime) -> int:
        """Store ``body`` if the row is still at version ``expected`` (None: absent); returns the new version.

        Raises:
            StateConflict: the row moved on (or appeared) since it was loaded.
            StorageError: ``detector_state_too_large`` or ``detector_state_bad_key``.
        """
        ...

    def load_many(self, kind: str, device_ids: Iterable[str]) -> dict[str, VersionedState]:
        """The stored states of ``device_ids`` (those never written are absent)."""
        ...

    def save_many(self, kind: str, writes: Sequence[StateWrite], now: datetime) -> dict[str, int]:
        """Every write of ``writes`` (distinct devices) or none; returns each device's new version.

        Raises:
            StateConflict: one of the rows moved on (or appeared) since it was loaded; nothing was written.
            StorageError: ``detector_state_too_large`` or ``detector_state_bad_key``.
        """
        ...

    def prune(self, kind: str, before: datetime) -> int:
        """Delete the ``kind`` rows last written before ``before``; returns how many. A process that loaded one
        meanwhile loses its write (:class:`StateConflict`) and applies its input again to no state."""
        ...


def _distinct(kind: str, writes: Sequence[StateWrite]) -> list[StateWrite]:
    for w in writes:
        _check(kind, w.device_id, w.body)
    if len({w.device_id for w in writes}) != len(writes):
        raise StorageError("one device written twice in one call", code="detector_state_bad_key")
    # One order for every writer, so two PostgreSQL transactions never wait on each other's rows in a cycle.
    return sorted(writes, key=lambda w: w.device_id)


class MemoryDetectorStateStore:
    """In one process (tests, a hub without a database)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], VersionedState] = {}
        self._written: dict[tuple[str, str], datetime] = {}
        self._lock = threading.Lock()

    def load(self, kind: str, device_id: str) -> VersionedState | None:
        with self._lock:
            return self._rows.get((kind, device_id))

    def save(self, kind: str, device_id: str, body: bytes, expected: int | None, now: datetime) -> int:
        return self.save_many(kind, [StateWrite(device_id, body, expected)], now)[device_id]

    def load_many(self, kind: str, device_ids: Iterable[str]) -> dict[str, VersionedState]:
        with self._lock:
            return {d: row for d in device_ids if (row := self._rows.get((kind, d))) is not None}

    def save_many(self, kind: str, writes: Sequence[StateWrite], now: datetime) -> dict[str, int]:
        ordered = _distinct(kind, writes)
        utc(now)
        with self._lock:
            for w in ordered:
                current = self._rows.get((kind, w.device_id))
                if (current.version if current is not None else None) != w.expected:
                    raise StateConflict(f"{kind} state of {w.device_id} changed since it was loaded")
            for w in ordered:
                self._rows[(kind, w.device_id)] = VersionedState(bytes(w.body), (w.expected or 0) + 1)
                self._written[(kind, w.device_id)] = utc(now)
            return {w.device_id: (w.expected or 0) + 1 for w in ordered}

    def prune(self, kind: str, before: datetime) -> int:
        cutoff = utc(before)
        with self._lock:
            old = [k for k, when in self._written.items() if k[0] == kind and when < cutoff]
            for k in old:
                del self._rows[k], self._written[k]
            return len(old)


class SqlDetectorStateStore:
    """On the hub's SQLite or PostgreSQL database: what one hub process writes, every other one loads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, kind: str, device_id: str) -> VersionedState | None:
        t = detector_state
        with self.engine.begin() as conn:
            row = conn.execute(select(t.c.body, t.c.version).where(
                and_(t.c.kind == kind, t.c.device_id == device_id))).first()
        return None if row is None else VersionedState(bytes(row.body), int(row.version))

    def save(self, kind: str, device_id: str, body: bytes, expected: int | None, now: datetime) -> int:
        return self.save_many(kind, [StateWrite(device_id, body, expected)], now)[device_id]

    def load_many(self, kind: str, device_ids: Iterable[str]) -> dict[str, VersionedState]:
        t = detector_state
        wanted = sorted(set(device_ids))
        out: dict[str, VersionedState] = {}
        with self.engine.begin() as conn:
            for i in range(0, len(wanted), _IN_CHUNK):
                rows = conn.execute(select(t.c.device_id, t.c.body, t.c.version).where(
                    and_(t.c.kind == kind, t.c.device_id.in_(wanted[i:i + _IN_CHUNK]))))
                out.update({r.device_id: VersionedState(bytes(r.body), int(r.version)) for r in rows})
        return out

    def save_many(self, kind: str, writes: Sequence[StateWrite], now: datetime) -> dict[str, int]:
        ordered = _distinct(kind, writes)
        t = detector_state
        when = utc(now)
        try:
            with self.engine.begin() as conn:  # a conflict raised inside rolls every row back
                for w in ordered:
                    if w.expected is None:
                        conn.execute(t.insert().values(kind=kind, device_id=w.device_id, version=1, body=w.body,
                                                       updated_at=when))
                        continue
                    done = conn.execute(update(t).where(and_(t.c.kind == kind, t.c.device_id == w.device_id,
                                                             t.c.version == w.expected))
                                        .values(version=w.expected + 1, body=w.body, updated_at=when))
                    if done.rowcount != 1:
                        raise StateConflict(f"{kind} state of {w.device_id} changed since it was loaded")
        except SqlIntegrityError:
            raise StateConflict(f"{kind} state of a device was created meanwhile") from None
        return {w.device_id: (w.expected or 0) + 1 for w in ordered}

    def prune(self, kind: str, before: datetime) -> int:
        t = detector_state
        with self.engine.begin() as conn:
            done = conn.execute(t.delete().where(and_(t.c.kind == kind, t.c.updated_at < utc(before))))
        return int(done.rowcount)
