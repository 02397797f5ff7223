"""Policy tables (migration ``0200_policy``) and the SQL policy repository.

``policy_versions`` holds every stored Cedar policy set (immutable),
``policy_activations`` the activation history (the last row is active), and
``device_posture`` the posture the policy engine reads, so a restarted or
additional hub process decides with the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Connection, Engine, RowMapping

from iotguard.errors import ConfigError
from iotguard.hub.db import metadata
from iotguard.hub.outbox import OutboxMessage, write_outbox
from iotguard.policy import PolicyActivation, PolicyVersion, Posture, PostureStore

__all__ = [
    "SqlPolicyRepository",
    "create_policy_tables",
    "device_posture",
    "enrollment_posture",
    "load_posture",
    "policy_activations",
    "policy_versions",
    "save_posture",
    "write_posture",
]

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("digest", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("author", String(128), nullable=False),
    Column("comment", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

policy_activations = Table(
    "policy_activations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", Integer, ForeignKey("policy_versions.version"), nullable=False),
    Column("previous", Integer, nullable=True),
    Column("actor", String(128), nullable=False),
    Column("activated_at", DateTime(timezone=True), nullable=False),
)

device_posture = Table(
    "device_posture",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("segment", String(64), nullable=False),
    Column("model", String(64), nullable=False),
    Column("trust_tier", String(16), nullable=False),
    Column("risk_score", Integer, nullable=False),
    Column("cert_not_after", DateTime(timezone=True), nullable=True),
    Column("attested_at", DateTime(timezone=True), nullable=True),
    Column("declared_location", String(64), nullable=False),
    Column("quarantined", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

_TABLES = [policy_versions, policy_activations, device_posture]


def create_policy_tables(conn: Connection) -> None:
    """Migration ``0200_policy``."""
    for table in _TABLES:
        table.create(conn, checkfirst=True)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _version(row: RowMapping) -> PolicyVersion:
    created = _aware(row["created_at"])
    assert created is not None
    return PolicyVersion(row["version"], row["text"], row["digest"], row["author"], row["comment"], created)


def _activation(row: RowMapping) -> PolicyActivation:
    at = _aware(row["activated_at"])
    assert at is not None
    return PolicyActivation(row["version"], row["previous"], row["actor"], at)


class SqlPolicyRepository:
    """:class:`~iotguard.policy.PolicyRepository` on the hub database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.engine = engine

    def add_version(self, text: str, digest: str, author: str, comment: str, at: datetime) -> PolicyVersion:
        with self._engine.begin() as conn:
            last = conn.execute(select(func.max(policy_versions.c.version))).scalar()
            number = int(last or 0) + 1
            conn.execute(
                insert(policy_versions).values(
                    version=number, digest=digest, text=text, author=author, comment=comment, created_at=at
                )
            )
        return PolicyVersion(number, text, digest, author, comment, at)

    def get_version(self, version: int) -> PolicyVersion:
        with self._engine.connect() as conn:
            row = (
                conn.execute(select(policy_versions).where(policy_versions.c.version == version))
                .mappings()
                .first()
            )
        if row is None:
            raise ConfigError(f"no policy version {version}")
        return _version(row)

    def versions(self) -> list[PolicyVersion]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(policy_versions).order_by(policy_versions.c.version)).mappings()
            return [_version(r) for r in rows]

    def record_activation(self, version: int, actor: str, at: datetime) -> PolicyActivation:
        self.get_version(version)
        with self._engine.begin() as conn:
            previous = conn.execute(
                select(policy_activations.c.version).order_by(policy_activations.c.id.desc()).limit(1)
            ).scalar()
            conn.execute(
                insert(policy_activations).values(
                    version=version, previous=previous, actor=actor, activated_at=at
                )
            )
        return PolicyActivation(version, previous, actor, at)

    def activations(self) -> list[PolicyActivation]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(policy_activations).order_by(policy_activations.c.id)).mappings()
            return [_activation(r) for r in rows]

    def active_version(self) -> PolicyVersion | None:
        with self._engine.connect() as conn:
            current = conn.execute(
                select(policy_activations.c.version).order_by(policy_activations.c.id.desc()).limit(1)
            ).scalar()
        return None if current is None else self.get_version(int(current))


def save_posture(engine: Engine, postures: Iterable[Posture], *, now: datetime,
                 effects: Sequence[OutboxMessage] = ()) -> None:
    """Upsert device posture rows (portable: delete then insert, one transaction, with its outbox ``effects``)."""
    postures = list(postures)
    if not postures:
        return
    with engine.begin() as conn:
        write_posture(conn, postures, now=now, effects=effects)


def write_posture(conn: Connection, postures: Iterable[Posture], *, now: datetime,
                  effects: Sequence[OutboxMessage] = ()) -> None:
    """:func:`save_posture` inside the caller's open transaction ``conn`` (the caller commits)."""
    rows = [
        {"device_id": p.device_id, "segment": p.segment, "model": p.model, "trust_tier": p.trust_tier,
         "risk_score": p.risk_score, "cert_not_after": p.cert_not_after, "attested_at": p.attested_at,
         "declared_location": p.declared_location, "quarantined": p.quarantined, "updated_at": now}
        for p in postures
    ]
    if not rows:
        return
    conn.execute(device_posture.delete().where(device_posture.c.device_id.in_([r["device_id"] for r in rows])))
    conn.execute(insert(device_posture), rows)
    write_outbox(conn, effects, now)


def _registry_posture(reg: RowMapping, row: RowMapping | None) -> Posture:
    """An active device's posture: its stored row where there is one, else from the registry."""
    if row is None:
        return Posture(device_id=reg["device_id"], segment=reg["segment"], model=reg["model"],
                       cert_not_after=_aware(reg["cert_not_after"]))
    return Posture(
        device_id=row["device_id"],
        segment=reg["segment"],
        model=row["model"],
        trust_tier=row["trust_tier"],
        risk_score=row["risk_score"],
        cert_not_after=_aware(reg["cert_not_after"]) or _aware(row["cert_not_after"]),
        attested_at=_aware(row["attested_at"]),
        declared_location=row["declared_location"],
        quarantined=bool(row["quarantined"]),
    )


def _active_devices() -> Any:
    from iotguard.hub.schema import devices

    return select(devices.c.device_id, devices.c.model, devices.c.segment, devices.c.cert_not_after).where(
        devices.c.status == "active")


def load_posture(engine: Engine, store: PostureStore | None = None) -> PostureStore:
    """Fill a posture store from the database.

    Every ``active`` device of the registry gets a posture: the stored
    ``device_posture`` row where there is one, else its registry segment,
    model and certificate expiry with tier ``unverified``. Devices that are
    not active (pending, revoked, decommissioned) get none and are denied.
    """
    store = store if store is not None else PostureStore()
    with engine.connect() as conn:
        stored = {r["device_id"]: r for r in conn.execute(select(device_posture)).mappings()}
        for reg in conn.execute(_active_devices()).mappings():
            store.put(_registry_posture(reg, stored.get(reg["device_id"])))
    return store


def load_device_posture(engine: Engine, device_id: str) -> Posture | None:
    """One device's posture as :func:`load_posture` would build it; ``None`` unless it is active."""
    from iotguard.hub.schema import devices

    with engine.connect() as conn:
        reg = conn.execute(_active_devices().where(devices.c.device_id == device_id)).mappings().first()
        if reg is None:
            return None
        row = conn.execute(select(device_posture).where(device_posture.c.device_id == device_id)).mappings().first()
    return _registry_posture(reg, row)


def enrollment_posture(engine: Engine, device_id: str, *, segment: str, model: str) -> Posture:
    """The posture a device enrolls with: its stored trust tier, risk and quarantine (kept across
    re-provisioning), its registry segment and model, and no certificate yet."""
    with engine.connect() as conn:
        row = conn.execute(select(device_posture).where(device_posture.c.device_id == device_id)).mappings().first()
    if row is None:
        return Posture(device_id=device_id, segment=segment, model=model)
    return Posture(device_id=device_id, segment=segment, model=model, trust_tier=row["trust_tier"],
                   risk_score=row["risk_score"], attested_at=_aware(row["attested_at"]),
                   declared_location=row["declared_location"], quarantined=bool(row["quarantined"]))


def trust_tier_counts(engine: Engine) -> dict[str, int]:
    """Active devices by trust tier (one grouped query; no stored posture counts as ``unverified``)."""
    from iotguard.hub.schema import devices

    tier = func.coalesce(device_posture.c.trust_tier, "unverified")
    query = (select(tier, func.count()).select_from(
        devices.outerjoin(device_posture, device_posture.c.device_id == devices.c.device_id))
        .where(devices.c.status == "active").group_by(tier))
    with engine.connect() as conn:
        return {str(t): int(n) for t, n in conn.execute(query)}
