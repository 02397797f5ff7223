"""The transactional outbox: side effects other processes must see, delivered at least once.

A service that changes state writes, in the *same* database transaction, one
outbox row per side effect (an audit event, a broker access rewrite, a
consent push). Any process that runs an :class:`OutboxDrainer` (every hub
process on its maintenance tick, the API right after a request, the CLI right
after its own commit) claims pending rows of the kinds it has handlers for and
delivers them. A change is therefore never committed without its effects, and
the CLI, the API and every hub process behave the same.

Claiming is safe with several processes: on PostgreSQL the candidate rows are
selected ``FOR UPDATE SKIP LOCKED``; on SQLite (one writer at a time) the
claim is a single ``UPDATE`` that selects its candidates under the write lock.
A claim is a lease: rows claimed by a process that died are claimed again
once the lease expires. Delivery is therefore at least once, and handlers are
idempotent: each confirms its rows through the ``confirm`` callback, which
succeeds only for the first deliverer (audit delivery calls it inside the
audit append transaction, so an event is appended exactly once).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from iotguard.clock import Clock, SystemClock
from iotguard.errors import IotGuardError, MalformedError, StorageError
from iotguard.hub.db import metadata

__all__ = [
    "DELIVERED_RETENTION",
    "MAX_PAYLOAD_BYTES",
    "MemoryOutboxStore",
    "OutboxDrainer",
    "OutboxHandler",
    "OutboxMessage",
    "OutboxRow",
    "OutboxStore",
    "SqlOutboxStore",
    "create_outbox_table",
    "outbox",
    "write_outbox",
]

log = logging.getLogger(__name__)

#: Largest payload one outbox row may carry (an audit event is at most a few KiB).
MAX_PAYLOAD_BYTES = 64 * 1024
#: How long a claim holds before another process may take the row over.
DEFAULT_LEASE = timedelta(seconds=60)
#: Longest wait before a failed delivery is tried again.
MAX_RETRY_DELAY = timedelta(minutes=5)
#: How long delivered rows are kept (the record of what was delivered and when).
DELIVERED_RETENTION = timedelta(days=7)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # A claim: who holds the row and until when; after ``claimed_until`` anyone may take it.
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", String(64), nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
)
Index("ix_outbox_pending", outbox.c.delivered_at, outbox.c.kind, outbox.c.id)


def create_outbox_table(conn: Connection) -> None:
    """Migration ``0004_outbox``."""
    outbox.create(conn, checkfirst=True)
    for index in outbox.indexes:
        index.create(conn, checkfirst=True)


@dataclass(frozen=True)
class OutboxMessage:
    """A side effect to deliver: its kind (which handler) and an opaque payload."""

    kind: str
    payload: bytes

    def __post_init__(self) -> None:
        if not self.kind or len(self.kind) > 32:
            raise MalformedError("outbox kind must be 1-32 characters")
        if len(self.payload) > MAX_PAYLOAD_BYTES:
            raise MalformedError("outbox payload too large")


@dataclass(frozen=True)
class OutboxRow:
    """A claimed outbox row."""

    id: int
    kind: str
    payload: bytes
    created_at: datetime
    attempts: int


#: Confirms claimed rows as delivered; returns False when another process already delivered them.
#: Its argument is an open transaction to confirm in (SQL) or None (confirm in a transaction of its own).
Confirm = Callable[[Any], bool]


class OutboxStore(Protocol):
    """Persistence of the outbox (SQL in the hub, in memory in unit tests)."""

    def enqueue(self, messages: Sequence[OutboxMessage], now: datetime, *, conn: Any = None) -> list[int]:
        """Add messages; inside ``conn``'s transaction when given. Returns their ids."""
        ...

    def claim(self, kinds: Iterable[str], worker: str, now: datetime, *, limit: int,
              lease: timedelta) -> list[OutboxRow]:
        """Claim up to ``limit`` undelivered, unclaimed (or lease-expired) rows of ``kinds``, oldest first."""
        ...

    def confirm(self, ids: Sequence[int], now: datetime, *, conn: Any = None) -> bool:
        """Mark rows delivered. True if all were still undelivered (this caller delivered them)."""
        ...

    def fail(self, ids: Sequence[int], reason: str, now: datetime, retry_after: timedelta) -> None:
        """Give up a claim after a failed delivery; the rows are tried again after ``retry_after``."""
        ...

    def pending(self, kinds: Iterable[str] | None = None) -> int:
        """Undelivered rows (of ``kinds``)."""
        ...

    def purge_delivered(self, before: datetime) -> int:
        """Delete rows delivered before ``before``; returns how many."""
        ...


def write_outbox(conn: Connection, messages: Sequence[OutboxMessage], now: datetime) -> list[int]:
    """Add outbox rows inside the caller's transaction (the one that makes the change); returns their ids."""
    ids = []
    for m in messages:
        res = conn.execute(outbox.insert().values(kind=m.kind, payload=m.payload, created_at=now, attempts=0))
        key = res.inserted_primary_key
        if key is None:
            raise StorageError("outbox insert returned no id")
        ids.append(int(key[0]))
    return ids


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _claim_token(worker: str) -> str:
    return f"{worker[:40]}:{secrets.token_hex(8)}"


class SqlOutboxStore:
    """The outbox in the hub database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    def enqueue(self, messages: Sequence[OutboxMessage], now: datetime, *, conn: Connection | None = None) -> list[int]:
        if not messages:
            return []
        if conn is None:
            with self.engine.begin() as c:
                return self._insert(c, messages, now)
        return self._insert(conn, messages, now)

    @staticmethod
    def _insert(conn: Connection, messages: Sequence[OutboxMessage], now: datetime) -> list[int]:
        return write_outbox(conn, messages, now)

    def claim(self, kinds: Iterable[str], worker: str, now: datetime, *, limit: int,
              lease: timedelta = DEFAULT_LEASE) -> list[OutboxRow]:
        kinds = sorted(set(kinds))
        if not kinds or limit <= 0:
            return []
        claimable = and_(outbox.c.delivered_at.is_(None), outbox.c.kind.in_(kinds),
                         or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now))
        token = _claim_token(worker)
        claim = {"claimed_by": token, "claimed_until": now + lease, "attempts": outbox.c.attempts + 1}
        with self.engine.begin() as c:
            candidates = select(outbox.c.id).where(claimable).order_by(outbox.c.id).limit(limit)
            if self._postgres:
                # Rows another drainer is claiming right now are skipped, not waited for.
                ids = [int(r[0]) for r in c.execute(candidates.with_for_update(skip_locked=True))]
                if not ids:
                    return []
                c.execute(update(outbox).where(outbox.c.id.in_(ids)).values(**claim))
            else:
                # SQLite: one statement, so the write lock is taken before the candidates are
                # read (a read-then-write transaction could not upgrade a stale snapshot).
                c.execute(update(outbox).where(and_(outbox.c.id.in_(candidates.scalar_subquery()), claimable))
                          .values(**claim))
            rows = c.execute(select(outbox.c.id, outbox.c.kind, outbox.c.payload, outbox.c.created_at,
                                    outbox.c.attempts)
                             .where(outbox.c.claimed_by == token).order_by(outbox.c.id)).all()
        return [OutboxRow(int(r.id), r.kind, bytes(r.payload), _aware(r.created_at), int(r.attempts)) for r in rows]

    def confirm(self, ids: Sequence[int], now: datetime, *, conn: Connection | None = None) -> bool:
        if not ids:
            return True
        stmt = (update(outbox).where(and_(outbox.c.id.in_(list(ids)), outbox.c.delivered_at.is_(None)))
                .values(delivered_at=now, claimed_until=None, last_error=None))
        if conn is None:
            with self.engine.begin() as c:
                return bool(c.execute(stmt).rowcount == len(ids))
        return bool(conn.execute(stmt).rowcount == len(ids))

    def fail(self, ids: Sequence[int], reason: str, now: datetime, retry_after: timedelta) -> None:
        if not ids:
            return
        with self.engine.begin() as c:
            c.execute(update(outbox).where(and_(outbox.c.id.in_(list(ids)), outbox.c.delivered_at.is_(None)))
                      .values(claimed_by=None, claimed_until=now + retry_after, last_error=reason[:64]))

    def pending(self, kinds: Iterable[str] | None = None) -> int:
        q = select(func.count()).select_from(outbox).where(outbox.c.delivered_at.is_(None))
        if kinds is not None:
            q = q.where(outbox.c.kind.in_(sorted(set(kinds))))
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())

    def purge_delivered(self, before: datetime) -> int:
        with self.engine.begin() as c:
            return int(c.execute(delete(outbox).where(and_(outbox.c.delivered_at.is_not(None),
                                                           outbox.c.delivered_at < before))).rowcount or 0)


@dataclass
class _MemoryRow:
    id: int
    kind: str
    payload: bytes
    created_at: datetime
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None


class MemoryOutboxStore:
    """The outbox in memory (unit tests); ``conn`` arguments are ignored."""

    def __init__(self) -> None:
        self._rows: dict[int, _MemoryRow] = {}
        self._next = 1
        self._lock = threading.Lock()

    def enqueue(self, messages: Sequence[OutboxMessage], now: datetime, *, conn: Any = None) -> list[int]:
        with self._lock:
            ids = []
            for m in messages:
                self._rows[self._next] = _MemoryRow(self._next, m.kind, m.payload, now)
                ids.append(self._next)
                self._next += 1
            return ids

    def claim(self, kinds: Iterable[str], worker: str, now: datetime, *, limit: int,
              lease: timedelta = DEFAULT_LEASE) -> list[OutboxRow]:
        wanted = set(kinds)
        token = _claim_token(worker)
        out: list[OutboxRow] = []
        with self._lock:
            for row in sorted(self._rows.values(), key=lambda r: r.id):
                if len(out) >= limit:
                    break
                if row.delivered_at is None and row.kind in wanted and \
                        (row.claimed_until is None or row.claimed_until < now):
                    row.claimed_by, row.claimed_until, row.attempts = token, now + lease, row.attempts + 1
                    out.append(OutboxRow(row.id, row.kind, row.payload, row.created_at, row.attempts))
        return out

    def confirm(self, ids: Sequence[int], now: datetime, *, conn: Any = None) -> bool:
        with self._lock:
            rows = [self._rows[i] for i in ids if i in self._rows]
            fresh = [r for r in rows if r.delivered_at is None]
            for r in fresh:
                r.delivered_at, r.claimed_until, r.last_error = now, None, None
            return len(fresh) == len(ids)

    def fail(self, ids: Sequence[int], reason: str, now: datetime, retry_after: timedelta) -> None:
        with self._lock:
            for i in ids:
                r = self._rows.get(i)
                if r is not None and r.delivered_at is None:
                    r.claimed_by, r.claimed_until, r.last_error = None, now + retry_after, reason[:64]

    def pending(self, kinds: Iterable[str] | None = None) -> int:
        wanted = None if kinds is None else set(kinds)
        with self._lock:
            return sum(1 for r in self._rows.values()
                       if r.delivered_at is None and (wanted is None or r.kind in wanted))

    def purge_delivered(self, before: datetime) -> int:
        with self._lock:
            gone = [i for i, r in self._rows.items() if r.delivered_at is not None and r.delivered_at < before]
            for i in gone:
                del self._rows[i]
            return len(gone)


class OutboxHandler(Protocol):
    """Delivers claimed rows of its kinds; must be idempotent (delivery is at least once).

    ``deliver`` performs the effect and calls ``confirm`` once: inside its own
    transaction when the effect is in the same database (then a second
    deliverer's effect rolls back), otherwise right after the effect.
    """

    @property
    def kinds(self) -> tuple[str, ...]:
        """The outbox kinds this handler delivers (now: a handler may have none while disconnected)."""
        ...

    def deliver(self, rows: Sequence[OutboxRow], confirm: Confirm) -> None:
        """Deliver ``rows`` (all of one kind, oldest first).

        Raises:
            IotGuardError: delivery failed; the rows are retried later.
        """
        ...


@dataclass
class OutboxDrainer:
    """Claims and delivers pending outbox rows with the handlers this process has.

    A process without a broker connection simply has no consent-push handler
    and never claims those rows.

    Args:
        store: The outbox.
        handlers: One handler per kind it declares.
        worker: This process's name in claims (diagnostics only).
        clock: Time source.
        batch: Rows claimed at once.
        lease: How long a claim holds.
    """

    store: OutboxStore
    handlers: Sequence[OutboxHandler]
    worker: str = "hub"
    clock: Clock = field(default_factory=SystemClock)
    batch: int = 100
    lease: timedelta = DEFAULT_LEASE
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def by_kind(self) -> Mapping[str, OutboxHandler]:
        return {k: h for h in self.handlers for k in h.kinds}

    def drain(self, *, max_rounds: int = 100) -> int:
        """Deliver what is pending now; returns how many rows this call delivered."""
        by_kind = self.by_kind
        delivered = 0
        with self._lock:  # one drain at a time per process; other processes are kept apart by claims
            for _ in range(max_rounds):
                rows = self.store.claim(by_kind, self.worker, self.clock.now(), limit=self.batch, lease=self.lease)
                if not rows:
                    break
                groups: dict[str, list[OutboxRow]] = {}
                for r in rows:
                    groups.setdefault(r.kind, []).append(r)
                for kind, group in groups.items():
                    delivered += self._deliver(by_kind[kind], group)
        return delivered

    def _deliver(self, handler: OutboxHandler, rows: list[OutboxRow]) -> int:
        ids = [r.id for r in rows]
        confirmed: list[bool] = []

        def confirm(conn: Any) -> bool:
            ok = self.store.confirm(ids, self.clock.now(), conn=conn)
            confirmed.append(ok)
            return ok

        try:
            handler.deliver(rows, confirm)
        except Exception as exc:  # a failed delivery is retried, never lost, never crashes the drainer
            reason = exc.code if isinstance(exc, IotGuardError) else type(exc).__name__
            attempts = max(r.attempts for r in rows)
            delay = min(MAX_RETRY_DELAY, timedelta(seconds=2 ** min(attempts, 10)))
            log.warning("outbox delivery of %d %s row(s) failed (%s); retrying in %s", len(rows), rows[0].kind,
                        reason, delay)
            self.store.fail(ids, reason, self.clock.now(), delay)
            return 0
        if not confirmed:  # a handler that forgot to confirm must not make rows deliver forever
            confirm(None)
        return len(ids) if confirmed and confirmed[0] else 0
