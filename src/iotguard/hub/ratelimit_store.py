"""Device-plane state in the hub database, shared by every hub process.

Two tables (migration ``0500_device_plane``, range 0500-0599):

- ``attempt_limits``: the :class:`~iotguard.hub.ratelimit.AttemptState` of
  each rate-limit / lockout key. Updates are compare-and-swap on a version
  column (read, compute, ``UPDATE ... WHERE version = read``, retry on a
  lost race; a new key is an ``INSERT`` that loses to a concurrent one the
  same way), so two hub processes never overwrite each other's counts on
  SQLite or PostgreSQL.
- ``device_request_nonces``: nonces of signed device requests, kept until
  the request's timestamp leaves the freshness window. The primary key makes
  "remember" atomic: of two processes inserting one nonce, one fails.

Rows that no longer change any decision (expired nonces, keys whose bucket
is full again with no failure and no lockout) are purged as the tables are
written.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError

from iotguard.errors import StorageError
from iotguard.hub.db import is_sqlite, metadata
from iotguard.hub.migrations import Migration, register
from iotguard.hub.ratelimit import AttemptState

__all__ = ["SqlAttemptStore", "SqlSeenNonces", "attempt_limits", "device_request_nonces"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Compare-and-swap attempts before giving up (each lost race means another process made progress).
_MAX_CAS_RETRIES = 50
#: Purge stale rows about once per this many writes per process.
_PURGE_EVERY = 256

attempt_limits = Table(
    "attempt_limits",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("refilled_at", DateTime(timezone=True), nullable=False),
    Column("failures", Integer, nullable=False),
    Column("lockouts", Integer, nullable=False),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("last_failure", DateTime(timezone=True), nullable=True),
    Column("version", BigInteger, nullable=False),
)

device_request_nonces = Table(
    "device_request_nonces",
    metadata,
    Column("device_id", String(64), nullable=False),
    Column("nonce", LargeBinary(32), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    PrimaryKeyConstraint("device_id", "nonce"),
)


def _apply(conn: Connection) -> None:
    attempt_limits.create(conn, checkfirst=True)
    device_request_nonces.create(conn, checkfirst=True)
    for index in device_request_nonces.indexes:
        index.create(conn, checkfirst=True)


register(Migration("0500_device_plane", "attempt limits and signed-request nonces shared by hub processes", _apply))


class _LostRace(Exception):
    """A compare-and-swap update found the row changed by another process."""


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # SQLite returns naive datetimes


def _state(row: object) -> AttemptState:
    refilled = _aware(row.refilled_at)  # type: ignore[attr-defined]
    assert refilled is not None
    return AttemptState(tokens=float(row.tokens), refilled_at=refilled,  # type: ignore[attr-defined]
                        failures=int(row.failures), lockouts=int(row.lockouts),  # type: ignore[attr-defined]
                        locked_until=_aware(row.locked_until),  # type: ignore[attr-defined]
                        last_failure=_aware(row.last_failure))  # type: ignore[attr-defined]


def _values(state: AttemptState) -> dict[str, object]:
    return {"tokens": state.tokens, "refilled_at": state.refilled_at, "failures": state.failures,
            "lockouts": state.lockouts, "locked_until": state.locked_until, "last_failure": state.last_failure}


class SqlAttemptStore:
    """:class:`~iotguard.hub.ratelimit.AttemptStore` in the hub database.

    Args:
        engine: The hub's database engine (migrated).
        idle_after: A key with no failure, no running lockout and no write
            for this long is purged (its bucket is full again, so it is
            indistinguishable from a new key). Use the longest
            ``burst / rate_per_s`` of the limiters sharing the store.
    """

    def __init__(self, engine: Engine, *, idle_after: timedelta = timedelta(hours=1)) -> None:
        self.engine = engine
        self.idle_after = idle_after
        self._writes = 0

    def get(self, key: str) -> AttemptState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(attempt_limits).where(attempt_limits.c.key == key)).first()
        return None if row is None else _state(row)

    def update(self, key: str, change: Callable[[AttemptState | None], tuple[AttemptState, _T]],
               now: datetime) -> _T:
        for _ in range(_MAX_CAS_RETRIES):
            try:
                with self.engine.begin() as conn:
                    row = conn.execute(select(attempt_limits).where(attempt_limits.c.key == key)).first()
                    state, result = change(None if row is None else _state(row))
                    if row is None:
                        # Loses (IntegrityError) to a process that created the key meanwhile.
                        conn.execute(insert(attempt_limits).values(key=key, version=1, **_values(state)))
                    else:
                        done = conn.execute(
                            update(attempt_limits)
                            .where(attempt_limits.c.key == key, attempt_limits.c.version == row.version)
                            .values(version=row.version + 1, **_values(state)))
                        if done.rowcount != 1:
                            raise _LostRace
                    self._maybe_purge(conn, now)
            except (_LostRace, SqlIntegrityError, OperationalError) as exc:
                # Another process changed the key first (or, on SQLite, held the write lock
                # when this read transaction tried to write): recompute from its state.
                if isinstance(exc, OperationalError) and not is_sqlite(self.engine):
                    raise StorageError("attempt limiter: database unavailable") from None
                time.sleep(random.uniform(0, 0.002))
                continue
            return result
        raise StorageError("attempt limiter: too much contention on one key")

    def _maybe_purge(self, conn: Connection, now: datetime) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY:
            return
        t = attempt_limits.c
        conn.execute(delete(attempt_limits).where(
            t.failures == 0, or_(t.locked_until.is_(None), t.locked_until <= now),
            t.refilled_at < now - self.idle_after))


class SqlSeenNonces:
    """:class:`~iotguard.identity.SeenNonces` in the hub database (atomic across hub processes)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writes = 0

    def remember(self, device_id: str, nonce: bytes, expires_at: datetime, now: datetime) -> bool:
        t = device_request_nonces.c
        try:
            with self.engine.begin() as conn:
                # A row past its expiry no longer protects anything (its timestamp check fails first).
                conn.execute(delete(device_request_nonces).where(
                    and_(t.device_id == device_id, t.nonce == nonce, t.expires_at <= now)))
                conn.execute(insert(device_request_nonces).values(device_id=device_id, nonce=nonce,
                                                                  expires_at=expires_at))
                self._writes += 1
                if self._writes % _PURGE_EVERY == 0:
                    conn.execute(delete(device_request_nonces).where(t.expires_at <= now))
        except SqlIntegrityError:
            return False
        return True
