"""Aggregation rounds every hub process sees: a round's spec and the log of the steps it accepted (ADR 0414).

A round is stored as what it was started with (its spec, canonical CBOR) and
an append-only log of the device messages the coordinator accepted and of
the phase closings it decided (``tick``), each with the time it was applied.
A hub process rebuilds a round by replaying the log through the coordinator,
which is deterministic, so every process over one database reaches the same
state, and a restarted hub resumes a round where it stood. The log holds
exactly what the coordinator may hold: public keys, sealed share boxes,
masked vectors, unmasking shares, ciphertexts; never a value.

A step runs inside :meth:`RoundStore.step`, which serialises the steps of one
round across processes (a row lock taken by a no-op ``UPDATE`` before any
read: PostgreSQL locks the row, SQLite takes its write lock) and appends at
``version + 1``. Sizes are bounded: a spec at most :data:`MAX_SPEC_BYTES`,
a logged message at most :data:`MAX_EVENT_BYTES`.

Tables (migration ``0420_aggregation_rounds``): ``aggregation_rounds``,
``aggregation_round_events``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from iotguard.errors import MalformedError
from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import aware_utc, utc

__all__ = ["FINISHED", "MAX_EVENT_BYTES", "MAX_SPEC_BYTES", "RoundEvent", "RoundStore", "RoundTx", "SqlRoundStore",
           "StoredRound", "check_event", "create_round_tables"]

#: Largest logged device message (the round protocol's own message limit is below it).
MAX_EVENT_BYTES = 65_536
#: Largest stored round spec (device ids, parameters, the sealed hub key share of an HE round).
MAX_SPEC_BYTES = 4 << 20
#: Phases in which a round no longer changes.
FINISHED = ("done", "failed")
_KINDS = frozenset({"tick", "advertise", "shares", "masked", "unmask", "he_submit"})

rounds = Table(
    "aggregation_rounds",
    metadata,
    Column("round_id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("spec", LargeBinary, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("version", Integer, nullable=False),
)

round_events = Table(
    "aggregation_round_events",
    metadata,
    Column("round_id", String(32), ForeignKey("aggregation_rounds.round_id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("device_id", String(128), nullable=False),
    Column("message", LargeBinary, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)


def create_round_tables(conn: Connection) -> None:
    """Migration ``0420_aggregation_rounds``."""
    rounds.create(conn, checkfirst=True)
    round_events.create(conn, checkfirst=True)


@dataclass(frozen=True)
class StoredRound:
    """A round as started: its id (32 hex), kind (``secure`` or ``he``), spec (CBOR) and start time."""

    round_id: str
    kind: str
    spec: bytes
    started_at: datetime


@dataclass(frozen=True)
class RoundEvent:
    """One accepted step (``tick``: a phase closing decided at ``at``), in log order ``seq`` (1, 2, ...)."""

    seq: int
    kind: str
    device_id: str
    message: bytes
    at: datetime


def check_event(kind: str, device_id: str, message: bytes) -> None:
    """Raises :class:`MalformedError` for an event the log does not take (unknown kind, oversized)."""
    if kind not in _KINDS or len(device_id) > 128 or len(message) > MAX_EVENT_BYTES:
        raise MalformedError("round event refused: unknown kind or too large")


class RoundTx(Protocol):
    """One step's hold on a round: its stored row, the log after a point, and appends at commit."""

    round: StoredRound
    version: int

    def events_after(self, seq: int) -> list[RoundEvent]: ...

    def append(self, kind: str, device_id: str, message: bytes, at: datetime, phase: str) -> None:
        """Log an accepted step; ``phase`` is the round's phase after it. Applied only if the step commits."""


class RoundStore(Protocol):
    """Where rounds live (memory for unit tests, SQL for every hub process to share)."""

    def create(self, rnd: StoredRound, phase: str, *, max_running: int, keep_finished: int) -> None:
        """Store a new round; forget finished rounds beyond the newest ``keep_finished``.

        Raises:
            MalformedError: ``max_running`` rounds are running, or the spec is too large.
        """

    def get(self, round_id: str) -> StoredRound | None: ...

    def step(self, round_id: str) -> AbstractContextManager[RoundTx | None]:
        """Hold the round for one step (None when unknown); appends commit when the block ends without error."""

    def phases(self) -> dict[str, int]:
        """Rounds stored, by phase (every process's)."""


class SqlRoundStore:
    """:class:`RoundStore` on the hub's SQLite or PostgreSQL database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, rnd: StoredRound, phase: str, *, max_running: int, keep_finished: int) -> None:
        if len(rnd.spec) > MAX_SPEC_BYTES:
            raise MalformedError("round spec too large")
        with self.engine.begin() as conn:
            running = conn.execute(select(func.count()).select_from(rounds)
                                   .where(rounds.c.phase.notin_(FINISHED))).scalar_one()
            if running >= max_running:
                raise MalformedError("too many aggregation rounds running")
            old = [r for (r,) in conn.execute(
                select(rounds.c.round_id).where(rounds.c.phase.in_(FINISHED))
                .order_by(rounds.c.started_at.desc(), rounds.c.round_id).offset(max(0, keep_finished - 1)))]
            if old:
                conn.execute(delete(round_events).where(round_events.c.round_id.in_(old)))
                conn.execute(delete(rounds).where(rounds.c.round_id.in_(old)))
            conn.execute(rounds.insert().values(round_id=rnd.round_id, kind=rnd.kind, spec=rnd.spec,
                                                started_at=utc(rnd.started_at), phase=phase, version=0))

    def get(self, round_id: str) -> StoredRound | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(rounds.c.kind, rounds.c.spec, rounds.c.started_at)
                               .where(rounds.c.round_id == round_id)).first()
        return None if row is None else StoredRound(round_id, row[0], bytes(row[1]), aware_utc(row[2]))

    @contextmanager
    def step(self, round_id: str) -> Iterator[_SqlTx | None]:
        with self.engine.begin() as conn:
            # lock first, read after: two processes' steps on one round run one after the other
            locked = conn.execute(update(rounds).where(rounds.c.round_id == round_id)
                                  .values(version=rounds.c.version)).rowcount
            row = conn.execute(select(rounds.c.kind, rounds.c.spec, rounds.c.started_at, rounds.c.version)
                               .where(rounds.c.round_id == round_id)).first() if locked else None
            if row is None:
                yield None
                return
            tx = _SqlTx(conn, StoredRound(round_id, row[0], bytes(row[1]), aware_utc(row[2])), int(row[3]))
            yield tx
            tx.flush()

    def phases(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {str(p): int(c) for p, c in conn.execute(select(rounds.c.phase, func.count())
                                                            .group_by(rounds.c.phase))}


class _SqlTx:
    def __init__(self, conn: Connection, rnd: StoredRound, version: int) -> None:
        self.conn, self.round, self.version = conn, rnd, version
        self._phase: str | None = None

    def events_after(self, seq: int) -> list[RoundEvent]:
        rows = self.conn.execute(
            select(round_events.c.seq, round_events.c.kind, round_events.c.device_id, round_events.c.message,
                   round_events.c.at)
            .where(round_events.c.round_id == self.round.round_id, round_events.c.seq > seq)
            .order_by(round_events.c.seq))
        return [RoundEvent(int(s), k, d, bytes(m), aware_utc(a)) for s, k, d, m, a in rows]

    def append(self, kind: str, device_id: str, message: bytes, at: datetime, phase: str) -> None:
        check_event(kind, device_id, message)
        self.version += 1
        self.conn.execute(round_events.insert().values(round_id=self.round.round_id, seq=self.version, kind=kind,
                                                       device_id=device_id, message=message, at=utc(at)))
        self._phase = phase

    def flush(self) -> None:
        if self._phase is not None:
            self.conn.execute(update(rounds).where(rounds.c.round_id == self.round.round_id)
                              .values(version=self.version, phase=self._phase))
