"""Each device's detector state, versioned, shared by every hub process.

Table (migration ``0710_detector_state``): ``detector_state``, one row per
(detector kind, device) holding the detector's bounded state as a strict
CBOR blob (never pickle; the detector parses it with a size limit) and a
version that every write increments. :meth:`DetectorStateStore.save` is a
compare-and-set on that version: a writer that loaded version ``n`` succeeds
only if the row is still at ``n`` (``None``: only if there is no row yet),
otherwise it raises :class:`StateConflict` and the caller reloads and
re-applies its input (ADR 0751). :class:`DetectorStateStore` is the
interface; :class:`SqlDetectorStateStore` serves SQLite and PostgreSQL,
:class:`MemoryDetectorStateStore` unit tests; both pass
``tests/hub/test_detector_state_store.py``.
"""

from __future__ import annotations

import threading
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
    "VersionedState",
    "create_detector_state_table",
    "detector_state",
]

#: Largest blob the store accepts (every detector's own limit is at most this).
MAX_BLOB_BYTES = 64 * 1024

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


class MemoryDetectorStateStore:
    """In one process (tests, a hub without a database)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], VersionedState] = {}
        self._lock = threading.Lock()

    def load(self, kind: str, device_id: str) -> VersionedState | None:
        with self._lock:
            return self._rows.get((kind, device_id))

    def save(self, kind: str, device_id: str, body: bytes, expected: int | None, now: datetime) -> int:
        _check(kind, device_id, body)
        utc(now)
        with self._lock:
            current = self._rows.get((kind, device_id))
            if (current.version if current is not None else None) != expected:
                raise StateConflict(f"{kind} state of {device_id} changed since it was loaded")
            version = (expected or 0) + 1
            self._rows[(kind, device_id)] = VersionedState(bytes(body), version)
            return version


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
        _check(kind, device_id, body)
        t = detector_state
        when = utc(now)
        if expected is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(t.insert().values(kind=kind, device_id=device_id, version=1, body=body,
                                                   updated_at=when))
            except SqlIntegrityError:
                raise StateConflict(f"{kind} state of {device_id} was created meanwhile") from None
            return 1
        with self.engine.begin() as conn:
            done = conn.execute(update(t).where(and_(t.c.kind == kind, t.c.device_id == device_id,
                                                     t.c.version == expected))
                                .values(version=expected + 1, body=body, updated_at=when))
        if done.rowcount != 1:
            raise StateConflict(f"{kind} state of {device_id} changed since it was loaded")
        return expected + 1
