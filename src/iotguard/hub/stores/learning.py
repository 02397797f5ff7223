"""Federated training runs and their pending updates, behind one Protocol.

A run's global model moves only through :meth:`LearningRunStore.commit_step`,
a compare-and-swap on the run's ``row_version`` that also deletes the
updates the step consumed, in one transaction: two hub processes closing the
same round cannot both apply it, and no update is applied twice. A device's
update for one model version is stored once (a replayed or duplicated
submission is refused). A secure run's model version is bound to its
secure-aggregation round (:class:`SecureRoundBinding`, migration
``1302_learning_secure_rounds``) by :meth:`LearningRunStore.bind_secure_round`,
a compare-and-swap that also checks the run is still at that version: every
hub process hands out the same round for a version, and a failed round is
replaced once. A secure FedBuff run keeps its devices' *ready markers* (a
:class:`PendingUpdate` with an empty payload: the device holds an update on
that base version) in the pending updates (ADR 1307). Memory and SQL implementations pass
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

__all__ = ["LearningRunStore", "MemoryLearningRunStore", "PendingUpdate", "RunRecord", "SecureRoundBinding",
           "SqlLearningRunStore", "create_learning_tables", "create_secure_round_table"]

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


learning_secure_rounds = Table(
    "learning_secure_rounds",
    _meta,
    Column("run_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("round_id", String(32), nullable=False),
    Column("members", Text, nullable=False),
    Column("threshold", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("charge_key", String(200), nullable=False),
    Column("bound_at", DateTime(timezone=True), nullable=False),
)


def create_learning_tables(conn: Connection) -> None:
    """Migration ``1301_learning_runs``: training runs and their pending updates."""
    learning_runs.create(conn, checkfirst=True)
    learning_updates.create(conn, checkfirst=True)


def create_secure_round_table(conn: Connection) -> None:
    """Migration ``1302_learning_secure_rounds``: each secure run version's aggregation round."""
    learning_secure_rounds.create(conn, checkfirst=True)


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


@dataclass(frozen=True)
class SecureRoundBinding:
    """Which secure-aggregation round carries a secure run's model version (the round's plan is recomputed
    from the run's settings, the member count and the threshold).

    Attributes:
        run_id, version: The run and the model version the round's sum steps.
        round_id: The aggregation round (32 hex).
        members: The selected devices, sorted.
        threshold: The round's threshold.
        attempt: 1 for the version's first round, +1 for each replacement of a failed one.
        charge_key: The ledger's ``once`` key the members' subjects were charged under.
        bound_at: When this round was bound.
    """

    run_id: str
    version: int
    round_id: str
    members: tuple[str, ...]
    threshold: int
    attempt: int
    charge_key: str
    bound_at: datetime


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

    def secure_round(self, run_id: str, version: int) -> SecureRoundBinding | None:
        """The round bound to the run's ``version``, or None."""
        ...

    def bind_secure_round(self, binding: SecureRoundBinding, replaces: str = "") -> bool:
        """Bind ``binding`` if the run is running at ``binding.version`` and the version's bound round is
        ``replaces`` (``""``: none yet), in one transaction; False (nothing changed) otherwise."""
        ...

    def secure_rounds(self, run_id: str) -> list[SecureRoundBinding]:
        """Every version's bound round (the last bound for each version), by version."""
        ...

    def withdraw(self, run_id: str, device_id: str) -> None:
        """Delete every pending update (or secure FedBuff ready marker) of ``device_id`` in the run."""
        ...


class MemoryLearningRunStore:
    """:class:`LearningRunStore` in memory (unit tests, single process)."""

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        self._updates: dict[str, dict[tuple[str, int], PendingUpdate]] = {}
        self._bound: dict[tuple[str, int], SecureRoundBinding] = {}
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

    def secure_round(self, run_id: str, version: int) -> SecureRoundBinding | None:
        with self._lock:
            return self._bound.get((run_id, version))

    def bind_secure_round(self, binding: SecureRoundBinding, replaces: str = "") -> bool:
        with self._lock:
            run = self._runs.get(binding.run_id)
            if run is None or run.status != "running" or run.version != binding.version:
                return False
            key = (binding.run_id, binding.version)
            current = self._bound.get(key)
            if (current.round_id if current is not None else "") != replaces:
                return False
            self._bound[key] = binding
            return True

    def secure_rounds(self, run_id: str) -> list[SecureRoundBinding]:
        with self._lock:
            return [b for (r, _), b in sorted(self._bound.items()) if r == run_id]

    def withdraw(self, run_id: str, device_id: str) -> None:
        with self._lock:
            bucket = self._updates.get(run_id, {})
            for key in [k for k in bucket if k[0] == device_id]:
                del bucket[key]


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

    def secure_round(self, run_id: str, version: int) -> SecureRoundBinding | None:
        t = learning_secure_rounds
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.run_id == run_id, t.c.version == version)).first()
        return None if row is None else _binding(row)

    def bind_secure_round(self, binding: SecureRoundBinding, replaces: str = "") -> bool:
        t, b = learning_secure_rounds, binding
        values = {"round_id": b.round_id, "members": json.dumps(list(b.members)), "threshold": b.threshold,
                  "attempt": b.attempt, "charge_key": b.charge_key, "bound_at": utc(b.bound_at)}
        try:
            with self.engine.begin() as conn:
                # Hold the run's row (a no-op update locks it; SQLite has one writer): the version cannot move
                # on between this check and the binding, and commit_step waits for us.
                held = conn.execute(learning_runs.update().where(
                    learning_runs.c.run_id == b.run_id, learning_runs.c.status == "running",
                    learning_runs.c.version == b.version).values(row_version=learning_runs.c.row_version)).rowcount
                if not held:
                    return False
                if not replaces:
                    conn.execute(t.insert().values(run_id=b.run_id, version=b.version, **values))
                    return True
                return bool(conn.execute(t.update().where(t.c.run_id == b.run_id, t.c.version == b.version,
                                                          t.c.round_id == replaces).values(**values)).rowcount)
        except SqlIntegrityError:
            return False  # another process bound the version's first round

    def secure_rounds(self, run_id: str) -> list[SecureRoundBinding]:
        t = learning_secure_rounds
        with self.engine.connect() as conn:
            return [_binding(r) for r in conn.execute(select(t).where(t.c.run_id == run_id).order_by(t.c.version))]

    def withdraw(self, run_id: str, device_id: str) -> None:
        t = learning_updates
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.run_id == run_id, t.c.device_id == device_id))


def _binding(row: Any) -> SecureRoundBinding:
    r = row._mapping
    return SecureRoundBinding(r["run_id"], int(r["version"]), r["round_id"], tuple(json.loads(r["members"])),
                              int(r["threshold"]), int(r["attempt"]), r["charge_key"], aware_utc(r["bound_at"]))


def next_row(run: RunRecord, **changes: Any) -> RunRecord:
    """``run`` with ``changes`` and the next ``row_version`` (for :meth:`LearningRunStore.commit_step`)."""
    return replace(run, row_version=run.row_version + 1, **changes)


def run_status_counts(engine: Engine) -> dict[str, int]:
    """Training runs by status (one grouped query over ``learning_runs``)."""
    query = select(learning_runs.c.status, func.count()).group_by(learning_runs.c.status)
    with engine.connect() as conn:
        return {str(status): int(n) for status, n in conn.execute(query)}
