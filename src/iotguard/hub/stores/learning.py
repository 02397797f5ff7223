"""Federated training runs and their pending updates, behind one Protocol.

A run's global model moves only through :meth:`LearningRunStore.commit_step`,
a compare-and-swap on the run's ``row_version`` that also deletes the
updates the step consumed, in one transaction: two hub processes closing the
same round cannot both apply it, and no update is applied twice. A device's
update for one model version is stored once (a replayed or duplicated
submission is refused). Memory and SQL implementations pass
``tests/learn/test_learning_store.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, String, Table, Text, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.errors import IntegrityError
from iotguard.hub.stores._sql import SqlStoreBase, aware_utc, utc

__all__ = ["LearningRunStore", "MemoryLearningRunStore", "PendingUpdate", "RunRecord", "SqlLearningRunStore",
           "create_learning_tables"]

_meta = MetaData()
learning_runs = Table(
    "learning_runs",
    _meta,
    Column("run_id", String(64), primary_key=True),
    Column("config", Text, nullable=False),
    Column("devices", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("parameters", LargeBinary, nullable=False),
    Column("round_started_at", DateTime(timezone=True), nullable=False),
    Column("started_by", String(128), nullable=False),
    Column("accepted", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("row_version", Integer, nullable=False),
)
learning_updates = Table(
    "learning_updates",
    _meta,
    Column("run_id", String(64), primary_key=True),
    Column("device_id", String(128), primary_key=True),
    Column("base_version", Integer, primary_key=True),
    Column("num_examples", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


def create_learning_tables(conn: Connection) -> None:
    """Migration ``1301_learning_runs``: training runs and their pending updates."""
    _meta.create_all(conn)


@dataclass(frozen=True)
class RunRecord:
    """A training run's durable state.

    Attributes:
        run_id: Identifier.
        config: The run's settings (JSON object; see :mod:`iotguard.hub.services.learning`).
        devices: Enrolled device ids.
        status: ``running``, ``stopped`` or ``completed``.
        version: Global model version (rounds or buffer steps applied).
        parameters: Global model, float64 little-endian, flattened.
        round_started_at: When the current version was published to devices.
        started_by: Operator.
        accepted, rejected: Updates counted / refused so far.
        row_version: Compare-and-swap counter.
    """

    run_id: str
    config: dict[str, Any]
    devices: tuple[str, ...]
    status: str
    version: int
    parameters: bytes
    round_started_at: datetime
    started_by: str
    accepted: int = 0
    rejected: int = 0
    row_version: int = 0


@dataclass(frozen=True)
class PendingUpdate:
    """An update received and not yet applied."""

    device_id: str
    base_version: int
    num_examples: int
    payload: bytes
    received_at: datetime


class LearningRunStore(Protocol):
    """Runs and pending updates."""

    def create(self, run: RunRecord) -> None:
        """Store a new run. Raises IntegrityError if the id exists."""
        ...

    def get(self, run_id: str) -> RunRecord | None:
        """One run, or None."""
        ...

    def runs(self) -> list[RunRecord]:
        """Every run, by id."""
        ...

    def add_update(self, run_id: str, update: PendingUpdate) -> bool:
        """Store an update; False (nothing stored) if that device already sent one for that version."""
        ...

    def pending(self, run_id: str) -> list[PendingUpdate]:
        """Updates not applied yet, oldest first."""
        ...

    def commit_step(self, run: RunRecord, consumed: Sequence[tuple[str, int]]) -> bool:
        """Replace the run if its stored ``row_version`` is ``run.row_version - 1`` and delete the
        ``(device_id, base_version)`` updates consumed, in one transaction; False if another writer won."""
        ...


class MemoryLearningRunStore:
    """:class:`LearningRunStore` in memory (unit tests, single process)."""

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        self._updates: dict[str, dict[tuple[str, int], PendingUpdate]] = {}
        self._lock = threading.Lock()

    def create(self, run: RunRecord) -> None:
        with self._lock:
            if run.run_id in self._runs:
                raise IntegrityError(f"run {run.run_id} exists")
            self._runs[run.run_id] = run
            self._updates[run.run_id] = {}

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(run_id)

    def runs(self) -> list[RunRecord]:
        with self._lock:
            return [self._runs[k] for k in sorted(self._runs)]

    def add_update(self, run_id: str, update: PendingUpdate) -> bool:
        with self._lock:
            bucket = self._updates.setdefault(run_id, {})
            key = (update.device_id, update.base_version)
            if key in bucket:
                return False
            bucket[key] = update
            return True

    def pending(self, run_id: str) -> list[PendingUpdate]:
        with self._lock:
            return sorted(self._updates.get(run_id, {}).values(), key=lambda u: (u.received_at, u.device_id))

    def commit_step(self, run: RunRecord, consumed: Sequence[tuple[str, int]]) -> bool:
        with self._lock:
            current = self._runs.get(run.run_id)
            if current is None or current.row_version != run.row_version - 1:
                return False
            self._runs[run.run_id] = run
            for key in consumed:
                self._updates[run.run_id].pop(key, None)
            return True


def _run(row: Any) -> RunRecord:
    r = row._mapping
    return RunRecord(r["run_id"], json.loads(r["config"]), tuple(json.loads(r["devices"])), r["status"],
                     int(r["version"]), bytes(r["parameters"]), aware_utc(r["round_started_at"]), r["started_by"],
                     int(r["accepted"]), int(r["rejected"]), int(r["row_version"]))


def _values(run: RunRecord) -> dict[str, Any]:
    return {"config": json.dumps(run.config, sort_keys=True), "devices": json.dumps(list(run.devices)),
            "status": run.status, "version": run.version, "parameters": run.parameters,
            "round_started_at": utc(run.round_started_at), "started_by": run.started_by,
            "accepted": run.accepted, "rejected": run.rejected, "row_version": run.row_version}


class SqlLearningRunStore(SqlStoreBase):
    """:class:`LearningRunStore` in the hub database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._bind(engine)

    def create(self, run: RunRecord) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(learning_runs.insert().values(run_id=run.run_id, **_values(run)))
        except SqlIntegrityError as exc:
            raise IntegrityError(f"run {run.run_id} exists") from exc

    def get(self, run_id: str) -> RunRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(learning_runs).where(learning_runs.c.run_id == run_id)).first()
        return None if row is None else _run(row)

    def runs(self) -> list[RunRecord]:
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(select(learning_runs).order_by(learning_runs.c.run_id))]

    def add_update(self, run_id: str, update: PendingUpdate) -> bool:
        stmt = self._upsert(learning_updates).values(
            run_id=run_id, device_id=update.device_id, base_version=update.base_version,
            num_examples=update.num_examples, payload=update.payload, received_at=utc(update.received_at),
        ).on_conflict_do_nothing().returning(learning_updates.c.device_id)
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def pending(self, run_id: str) -> list[PendingUpdate]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(learning_updates).where(learning_updates.c.run_id == run_id)
                                .order_by(learning_updates.c.received_at, learning_updates.c.device_id))
            return [PendingUpdate(r.device_id, int(r.base_version), int(r.num_examples), bytes(r.payload),
                                  aware_utc(r.received_at)) for r in rows]

    def commit_step(self, run: RunRecord, consumed: Sequence[tuple[str, int]]) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(
                learning_runs.update()
                .where(learning_runs.c.run_id == run.run_id, learning_runs.c.row_version == run.row_version - 1)
                .values(**_values(run))
            ).rowcount
            if not done:
                return False
            for device_id, base_version in consumed:
                conn.execute(learning_updates.delete().where(
                    learning_updates.c.run_id == run.run_id, learning_updates.c.device_id == device_id,
                    learning_updates.c.base_version == base_version))
            return True


def next_row(run: RunRecord, **changes: Any) -> RunRecord:
    """``run`` with ``changes`` and the next ``row_version`` (for :meth:`LearningRunStore.commit_step`)."""
    return replace(run, row_version=run.row_version + 1, **changes)


def run_status_counts(engine: Engine) -> dict[str, int]:
    """Training runs by status (one grouped query over ``learning_runs``)."""
    query = select(learning_runs.c.status, func.count()).group_by(learning_runs.c.status)
    with engine.connect() as conn:
        return {str(status): int(n) for status, n in conn.execute(query)}
