"""Rollout campaigns and the devices' update reports behind one Protocol.

Tables (migration ``1210_rollouts``): ``rollouts`` (one row per campaign,
saved compare-and-swap on its revision so two hub processes never both move
a campaign) and ``rollout_reports`` (each device's last install outcome for a
campaign, with the telemetry rejection count it had when it reported: the
baseline of the telemetry gate). Memory and SQL implementations pass
``tests/rollout/test_rollout_store.py`` on memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.engine import Connection, Engine

from iotguard.errors import RolloutStateError, UnknownRolloutError
from iotguard.hub.stores._sql import SqlStoreBase, aware_utc, utc
from iotguard.rollout import HealthGates, RolloutCampaign, RolloutState

__all__ = [
    "OFFERED",
    "REPORT_OUTCOMES",
    "SEEN",
    "DeviceReport",
    "MemoryRolloutStore",
    "RolloutStore",
    "SqlRolloutStore",
    "create_rollout_tables",
]

#: Outcomes a device reports for an install attempt.
REPORT_OUTCOMES = frozenset({"committed", "rolled_back"})
#: What the hub records when it offers a device the release.
OFFERED = "offered"
#: What the hub records when a device of the model checks in outside the current cohort.
SEEN = "seen"

_meta = MetaData()
rollouts = Table(
    "rollouts",
    _meta,
    Column("rollout_id", String(64), primary_key=True),
    Column("model", String(64), nullable=False, index=True),
    Column("version", BigInteger, nullable=False),
    Column("stages", Text, nullable=False),
    Column("gates", Text, nullable=False),
    Column("stage", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(256), nullable=False),
    Column("stage_started_at", DateTime(timezone=True), nullable=False),
    Column("revision", BigInteger, nullable=False),
)
reports = Table(
    "rollout_reports",
    _meta,
    Column("rollout_id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False),
    Column("baseline_rejections", BigInteger, nullable=False),
    Column("position", Float, nullable=False),
    PrimaryKeyConstraint("rollout_id", "device_id"),
)


def create_rollout_tables(conn: Connection) -> None:
    """Migration ``1210_rollouts``: campaigns and device reports."""
    _meta.create_all(conn)


@dataclass(frozen=True)
class DeviceReport:
    """A device's last install outcome in a campaign.

    Attributes:
        rollout_id: The campaign.
        device_id: The device.
        outcome: ``seen`` (checked in outside the cohort), ``offered`` (the hub
            named the release), ``committed`` or ``rolled_back``.
        reported_at: When the hub received the report.
        baseline_rejections: The device's telemetry rejection total when it reported.
        position: The device's cohort position (0..100).
    """

    rollout_id: str
    device_id: str
    outcome: str
    reported_at: datetime
    baseline_rejections: int
    position: float


class RolloutStore(Protocol):
    """Campaigns and device reports."""

    def create(self, campaign: RolloutCampaign) -> None:
        """Store a new campaign.

        Raises:
            RolloutStateError: the id is taken, or another campaign of the model is active.
        """
        ...

    def get(self, rollout_id: str) -> RolloutCampaign:
        """One campaign.

        Raises:
            UnknownRolloutError: none by that id.
        """
        ...

    def campaigns(self) -> list[RolloutCampaign]:
        """Every campaign, by id."""
        ...

    def active(self, model: str) -> RolloutCampaign | None:
        """The running or paused campaign of ``model``, if any."""
        ...

    def save(self, campaign: RolloutCampaign) -> None:
        """Store a campaign's next revision (``campaign.revision`` is one above the stored one).

        Raises:
            RolloutStateError: the stored campaign changed meanwhile.
            UnknownRolloutError: none by that id.
        """
        ...

    def record_report(self, report: DeviceReport) -> None:
        """Store (or replace) a device's report for a campaign."""
        ...

    def reports(self, rollout_id: str) -> list[DeviceReport]:
        """Every report of a campaign, by device id."""
        ...

    def report_of(self, rollout_id: str, device_id: str) -> DeviceReport | None:
        """One device's report for a campaign, if any."""
        ...


def _gates_json(gates: HealthGates) -> str:
    return json.dumps({**dataclasses.asdict(gates), "soak": gates.soak.total_seconds()}, sort_keys=True)


def _gates(text: str) -> HealthGates:
    data: dict[str, Any] = json.loads(text)
    data["soak"] = timedelta(seconds=float(data["soak"]))
    return HealthGates(**data)


def _row(c: RolloutCampaign) -> dict[str, Any]:
    return {"rollout_id": c.rollout_id, "model": c.model, "version": c.version, "stages": json.dumps(c.stages),
            "gates": _gates_json(c.gates), "stage": c.stage, "state": str(c.state), "reason": c.reason[:256],
            "stage_started_at": utc(c.stage_started_at), "revision": c.revision}


def _campaign(r: Any) -> RolloutCampaign:
    return RolloutCampaign(r.rollout_id, r.model, int(r.version), tuple(float(s) for s in json.loads(r.stages)),
                           _gates(r.gates), int(r.stage), RolloutState(r.state), r.reason,
                           aware_utc(r.stage_started_at), int(r.revision))


class MemoryRolloutStore:
    """:class:`RolloutStore` in memory (unit tests, simulations, one process)."""

    def __init__(self) -> None:
        self._campaigns: dict[str, RolloutCampaign] = {}
        self._reports: dict[tuple[str, str], DeviceReport] = {}

    def create(self, campaign: RolloutCampaign) -> None:
        if campaign.rollout_id in self._campaigns:
            raise RolloutStateError(f"rollout {campaign.rollout_id} exists")
        if self.active(campaign.model) is not None:
            raise RolloutStateError(f"a rollout of {campaign.model} is active")
        self._campaigns[campaign.rollout_id] = campaign

    def get(self, rollout_id: str) -> RolloutCampaign:
        try:
            return self._campaigns[rollout_id]
        except KeyError:
            raise UnknownRolloutError(rollout_id) from None

    def campaigns(self) -> list[RolloutCampaign]:
        return [self._campaigns[k] for k in sorted(self._campaigns)]

    def active(self, model: str) -> RolloutCampaign | None:
        return next((c for c in self._campaigns.values() if c.model == model and c.active), None)

    def save(self, campaign: RolloutCampaign) -> None:
        if self.get(campaign.rollout_id).revision != campaign.revision - 1:
            raise RolloutStateError(f"rollout {campaign.rollout_id} changed meanwhile")
        self._campaigns[campaign.rollout_id] = campaign

    def record_report(self, report: DeviceReport) -> None:
        self._reports[(report.rollout_id, report.device_id)] = report

    def reports(self, rollout_id: str) -> list[DeviceReport]:
        return [r for (rid, _d), r in sorted(self._reports.items()) if rid == rollout_id]

    def report_of(self, rollout_id: str, device_id: str) -> DeviceReport | None:
        return self._reports.get((rollout_id, device_id))


class SqlRolloutStore(SqlStoreBase):
    """:class:`RolloutStore` in the hub database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._bind(engine)

    def create(self, campaign: RolloutCampaign) -> None:
        with self.engine.begin() as conn:
            if self._dialect == "postgresql":  # one creator per model at a time across hub processes
                conn.exec_driver_sql("LOCK TABLE rollouts IN SHARE ROW EXCLUSIVE MODE")
            taken = conn.execute(select(rollouts.c.rollout_id).where(rollouts.c.rollout_id == campaign.rollout_id))
            if taken.first() is not None:
                raise RolloutStateError(f"rollout {campaign.rollout_id} exists")
            if self._active(conn, campaign.model) is not None:
                raise RolloutStateError(f"a rollout of {campaign.model} is active")
            conn.execute(rollouts.insert().values(**_row(campaign)))

    def get(self, rollout_id: str) -> RolloutCampaign:
        with self.engine.connect() as conn:
            row = conn.execute(select(rollouts).where(rollouts.c.rollout_id == rollout_id)).first()
        if row is None:
            raise UnknownRolloutError(rollout_id)
        return _campaign(row)

    def campaigns(self) -> list[RolloutCampaign]:
        with self.engine.connect() as conn:
            return [_campaign(r) for r in conn.execute(select(rollouts).order_by(rollouts.c.rollout_id))]

    @staticmethod
    def _active(conn: Connection, model: str) -> RolloutCampaign | None:
        row = conn.execute(select(rollouts).where(
            rollouts.c.model == model,
            rollouts.c.state.in_([str(RolloutState.RUNNING), str(RolloutState.PAUSED)]))).first()
        return None if row is None else _campaign(row)

    def active(self, model: str) -> RolloutCampaign | None:
        with self.engine.connect() as conn:
            return self._active(conn, model)

    def save(self, campaign: RolloutCampaign) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(rollouts.update().where(
                rollouts.c.rollout_id == campaign.rollout_id,
                rollouts.c.revision == campaign.revision - 1).values(**_row(campaign)))
            if done.rowcount != 1:
                self.get(campaign.rollout_id)
                raise RolloutStateError(f"rollout {campaign.rollout_id} changed meanwhile")

    def record_report(self, report: DeviceReport) -> None:
        values = {"rollout_id": report.rollout_id, "device_id": report.device_id, "outcome": report.outcome,
                  "reported_at": utc(report.reported_at), "baseline_rejections": report.baseline_rejections,
                  "position": report.position}
        ins = self._upsert(reports).values(**values)
        with self.engine.begin() as conn:
            conn.execute(ins.on_conflict_do_update(
                index_elements=["rollout_id", "device_id"],
                set_={k: v for k, v in values.items() if k not in ("rollout_id", "device_id")}))

    def reports(self, rollout_id: str) -> list[DeviceReport]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(reports).where(reports.c.rollout_id == rollout_id)
                                .order_by(reports.c.device_id))
            return [_report(r) for r in rows]

    def report_of(self, rollout_id: str, device_id: str) -> DeviceReport | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(reports).where(reports.c.rollout_id == rollout_id,
                                                     reports.c.device_id == device_id)).first()
        return None if row is None else _report(row)


def _report(r: Any) -> DeviceReport:
    return DeviceReport(r.rollout_id, r.device_id, r.outcome, aware_utc(r.reported_at), int(r.baseline_rejections),
                        float(r.position))
