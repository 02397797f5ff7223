"""Detection's tables: alerts (as data) and the response actions taken for them.

Tables (migration ``0700_detection``): ``detection_alerts`` (one row per
alert, keyed by its content hash :attr:`~iotguard.detection.Alert.alert_id`,
with the canonical JSON) and ``detection_actions`` (every planned action,
executed, waiting for approval or suppressed, with its outcome, linked to the
alert that caused it). Writes take outbox messages that are committed in the
same transaction (the audit entries of the alert and of each action).
:class:`AlertStore` is the interface; :class:`SqlAlertStore` serves SQLite and
PostgreSQL, :class:`MemoryAlertStore` unit tests; both pass
``tests/hub/test_alert_store.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    String,
    Table,
    Text,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from iotguard.detection.alert import Alert
from iotguard.errors import UnknownAlertError
from iotguard.hub.db import metadata
from iotguard.hub.outbox import OutboxMessage, write_outbox
from iotguard.hub.stores._sql import aware, aware_utc, utc

__all__ = [
    "AlertStore",
    "MemoryAlertStore",
    "SqlAlertStore",
    "StoredAction",
    "StoredAlert",
    "create_detection_tables",
    "detection_actions",
    "detection_alerts",
]

detection_alerts = Table(
    "detection_alerts",
    metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("device_id", String(128), nullable=False, index=True),
    Column("detector", String(64), nullable=False),
    Column("severity", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("raised_at", DateTime(timezone=True), nullable=False, index=True),
    Column("body", Text, nullable=False),
    Column("acked_at", DateTime(timezone=True), nullable=True),
    Column("acked_by", String(128), nullable=True),
)

detection_actions = Table(
    "detection_actions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("alert_id", String(64), nullable=False, index=True),
    Column("device_id", String(128), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("rule", String(128), nullable=False),
    Column("playbook", String(160), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)


def create_detection_tables(conn: Connection) -> None:
    """Migration ``0700_detection``."""
    metadata.create_all(conn, tables=[detection_alerts, detection_actions])


@dataclass(frozen=True)
class StoredAlert:
    """An alert as the hub keeps it."""

    alert: Alert
    raised_at: datetime
    acked_at: datetime | None = None
    acked_by: str | None = None

    @property
    def alert_id(self) -> str:
        return self.alert.alert_id

    def to_dict(self) -> dict[str, Any]:
        return {**self.alert.as_dict(), "alert_id": self.alert_id, "raised_at": self.raised_at.isoformat(),
                "acked_at": self.acked_at.isoformat() if self.acked_at else None, "acked_by": self.acked_by}


@dataclass(frozen=True)
class StoredAction:
    """One response action and what became of it.

    Attributes:
        outcome: ``done``, ``awaiting_approval``, ``suppressed``, ``not_available`` (a service built
            without an attestation or rollout collaborator, notify without a webhook) or ``failed:<code>``.
    """

    id: int
    alert_id: str
    device_id: str
    kind: str
    status: str
    reason: str
    rule: str
    playbook: str
    outcome: str
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "alert_id": self.alert_id, "device_id": self.device_id, "kind": self.kind,
                "status": self.status, "reason": self.reason, "rule": self.rule, "playbook": self.playbook,
                "outcome": self.outcome, "at": self.at.isoformat()}


class AlertStore(Protocol):
    """Alerts and the actions taken for them."""

    def add_alert(self, alert: Alert, at: datetime, *, effects: Sequence[OutboxMessage] = ()) -> bool:
        """Store an alert with its effects; False (and nothing written) when it is already stored."""
        ...

    def add_alerts(self, items: Sequence[tuple[Alert, Sequence[OutboxMessage]]], at: datetime) -> list[Alert]:
        """Store several alerts, each with its effects, in one transaction; returns those not stored before."""
        ...

    def get(self, alert_id: str) -> StoredAlert:
        """Raises UnknownAlertError."""
        ...

    def alerts(self, *, device_id: str | None = None, unacked: bool = False, limit: int = 100) -> list[StoredAlert]:
        """Newest first."""
        ...

    def ack(self, alert_id: str, actor: str, at: datetime, *, effects: Sequence[OutboxMessage] = ()) -> StoredAlert:
        """Acknowledge (idempotent: the first acknowledgement stays). Raises UnknownAlertError."""
        ...

    def add_action(self, action: StoredAction, *, effects: Sequence[OutboxMessage] = ()) -> StoredAction:
        """Record an action (its ``id`` is assigned here)."""
        ...

    def add_actions(self, items: Sequence[tuple[StoredAction, Sequence[OutboxMessage]]]) -> list[StoredAction]:
        """Record several actions, each with its effects, in one transaction (ids assigned here, in order)."""
        ...

    def actions(self, *, alert_id: str | None = None, device_id: str | None = None) -> list[StoredAction]:
        """Oldest first."""
        ...

    def done_actions(self, since: datetime, kinds: Sequence[str]) -> list[StoredAction]:
        """Actions carried out (outcome ``done``) at or after ``since``, and those of ``kinds`` at any time;
        oldest first (what the planner's state needs, without reading the whole history)."""
        ...

    def counts(self) -> dict[tuple[str, int], int]:
        """Stored alerts per (detector, severity)."""
        ...


def _stored(r: Any) -> StoredAlert:
    return StoredAlert(Alert.from_json(r.body), aware_utc(r.raised_at), aware(r.acked_at), r.acked_by)


def _action(r: Any) -> StoredAction:
    return StoredAction(r.id, r.alert_id, r.device_id, r.kind, r.status, r.reason, r.rule, r.playbook, r.outcome,
                        aware_utc(r.at))


class SqlAlertStore:
    """Alerts and actions on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_alert(self, alert: Alert, at: datetime, *, effects: Sequence[OutboxMessage] = ()) -> bool:
        return bool(self.add_alerts([(alert, effects)], at))

    def add_alerts(self, items: Sequence[tuple[Alert, Sequence[OutboxMessage]]], at: datetime) -> list[Alert]:
        fresh: list[Alert] = []
        with self.engine.begin() as c:
            ids = [a.alert_id for a, _ in items]
            known = {r[0] for r in c.execute(select(detection_alerts.c.alert_id)
                                             .where(detection_alerts.c.alert_id.in_(ids)))} if ids else set()
            effects: list[OutboxMessage] = []
            for alert, alert_effects in items:
                if alert.alert_id in known:
                    continue
                known.add(alert.alert_id)
                c.execute(detection_alerts.insert().values(
                    alert_id=alert.alert_id, device_id=alert.device, detector=alert.detector,
                    severity=int(alert.severity), score=alert.score, raised_at=utc(at), body=alert.to_json()))
                effects.extend(alert_effects)
                fresh.append(alert)
            if effects:
                write_outbox(c, effects, at)
        return fresh

    def get(self, alert_id: str) -> StoredAlert:
        with self.engine.connect() as c:
            r = c.execute(select(detection_alerts).where(detection_alerts.c.alert_id == alert_id)).first()
        if r is None:
            raise UnknownAlertError(f"no alert {alert_id[:64]!r}")
        return _stored(r)

    def alerts(self, *, device_id: str | None = None, unacked: bool = False, limit: int = 100) -> list[StoredAlert]:
        q = select(detection_alerts)
        if device_id is not None:
            q = q.where(detection_alerts.c.device_id == device_id)
        if unacked:
            q = q.where(detection_alerts.c.acked_at.is_(None))
        q = q.order_by(detection_alerts.c.raised_at.desc(), detection_alerts.c.alert_id).limit(max(0, limit))
        with self.engine.connect() as c:
            return [_stored(r) for r in c.execute(q)]

    def ack(self, alert_id: str, actor: str, at: datetime, *, effects: Sequence[OutboxMessage] = ()) -> StoredAlert:
        with self.engine.begin() as c:
            n = c.execute(update(detection_alerts).where(detection_alerts.c.alert_id == alert_id,
                                                         detection_alerts.c.acked_at.is_(None))
                          .values(acked_at=utc(at), acked_by=actor)).rowcount
            if n and effects:
                write_outbox(c, effects, at)
        return self.get(alert_id)

    def add_action(self, action: StoredAction, *, effects: Sequence[OutboxMessage] = ()) -> StoredAction:
        return self.add_actions([(action, effects)])[0]

    def add_actions(self, items: Sequence[tuple[StoredAction, Sequence[OutboxMessage]]]) -> list[StoredAction]:
        out: list[StoredAction] = []
        with self.engine.begin() as c:
            for action, effects in items:
                values = {k: v for k, v in action.to_dict().items() if k != "id"}
                values["at"] = utc(action.at)
                new_id = c.execute(detection_actions.insert().values(**values)
                                   .returning(detection_actions.c.id)).scalar_one()
                if effects:
                    write_outbox(c, effects, action.at)
                out.append(replace(action, id=int(new_id)))
        return out

    def actions(self, *, alert_id: str | None = None, device_id: str | None = None) -> list[StoredAction]:
        q = select(detection_actions)
        if alert_id is not None:
            q = q.where(detection_actions.c.alert_id == alert_id)
        if device_id is not None:
            q = q.where(detection_actions.c.device_id == device_id)
        with self.engine.connect() as c:
            return [_action(r) for r in c.execute(q.order_by(detection_actions.c.id))]

    def done_actions(self, since: datetime, kinds: Sequence[str]) -> list[StoredAction]:
        t = detection_actions
        q = select(t).where(t.c.outcome == "done", or_(t.c.at >= utc(since), t.c.kind.in_(list(kinds))))
        with self.engine.connect() as c:
            return [_action(r) for r in c.execute(q.order_by(t.c.id))]

    def counts(self) -> dict[tuple[str, int], int]:
        q = select(detection_alerts.c.detector, detection_alerts.c.severity, func.count()).group_by(
            detection_alerts.c.detector, detection_alerts.c.severity)
        with self.engine.connect() as c:
            return {(r[0], int(r[1])): int(r[2]) for r in c.execute(q)}


class MemoryAlertStore:
    """Alerts and actions in memory (unit tests); effects go to ``self.effects``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alerts: dict[str, StoredAlert] = {}
        self._actions: list[StoredAction] = []
        self.effects: list[OutboxMessage] = []

    def add_alert(self, alert: Alert, at: datetime, *, effects: Sequence[OutboxMessage] = ()) -> bool:
        return bool(self.add_alerts([(alert, effects)], at))

    def add_alerts(self, items: Sequence[tuple[Alert, Sequence[OutboxMessage]]], at: datetime) -> list[Alert]:
        fresh: list[Alert] = []
        with self._lock:
            for alert, effects in items:
                if alert.alert_id in self._alerts:
                    continue
                self._alerts[alert.alert_id] = StoredAlert(alert, utc(at))
                self.effects.extend(effects)
                fresh.append(alert)
        return fresh

    def get(self, alert_id: str) -> StoredAlert:
        with self._lock:
            found = self._alerts.get(alert_id)
        if found is None:
            raise UnknownAlertError(f"no alert {alert_id[:64]!r}")
        return found

    def alerts(self, *, device_id: str | None = None, unacked: bool = False, limit: int = 100) -> list[StoredAlert]:
        with self._lock:
            rows = [a for a in self._alerts.values()
                    if (device_id is None or a.alert.device == device_id) and not (unacked and a.acked_at)]
        rows.sort(key=lambda a: a.alert_id)
        rows.sort(key=lambda a: a.raised_at, reverse=True)
        return rows[:max(0, limit)]

    def ack(self, alert_id: str, actor: str, at: datetime, *, effects: Sequence[OutboxMessage] = ()) -> StoredAlert:
        current = self.get(alert_id)
        with self._lock:
            if current.acked_at is None:
                current = replace(current, acked_at=utc(at), acked_by=actor)
                self._alerts[alert_id] = current
                self.effects.extend(effects)
        return current

    def add_action(self, action: StoredAction, *, effects: Sequence[OutboxMessage] = ()) -> StoredAction:
        return self.add_actions([(action, effects)])[0]

    def add_actions(self, items: Sequence[tuple[StoredAction, Sequence[OutboxMessage]]]) -> list[StoredAction]:
        out: list[StoredAction] = []
        with self._lock:
            for action, effects in items:
                stored = replace(action, id=len(self._actions) + 1, at=utc(action.at))
                self._actions.append(stored)
                self.effects.extend(effects)
                out.append(stored)
        return out

    def actions(self, *, alert_id: str | None = None, device_id: str | None = None) -> list[StoredAction]:
        with self._lock:
            return [a for a in self._actions
                    if (alert_id is None or a.alert_id == alert_id) and (device_id is None or a.device_id == device_id)]

    def done_actions(self, since: datetime, kinds: Sequence[str]) -> list[StoredAction]:
        with self._lock:
            return [a for a in self._actions if a.outcome == "done" and (a.at >= since or a.kind in kinds)]

    def counts(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        with self._lock:
            for a in self._alerts.values():
                key = (a.alert.detector, int(a.alert.severity))
                out[key] = out.get(key, 0) + 1
        return out
