"""Data subjects and consent: who owns which device, every grant and withdrawal, every push and its ack.

Tables (part of migration ``0300_privacy``): ``privacy_subject_devices``,
``privacy_consent_events`` (append-only; the current
:class:`~iotguard.privacy.ConsentState` is their fold) and
``privacy_consent_pushes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Protocol

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    select,
    update,
)
from sqlalchemy.engine import Connection

from iotguard.audit import AuditEvent, EventType
from iotguard.errors import (
    ConsentError,
)
from iotguard.hub.db import metadata
from iotguard.hub.outbox import OutboxMessage, write_outbox
from iotguard.hub.stores._sql import AuditedSqlStore
from iotguard.hub.stores._sql import aware_utc as _aware
from iotguard.hub.stores._sql import utc as _utc
from iotguard.privacy.consent import ConsentAck, ConsentConfig, ConsentDecision, ConsentState
from iotguard.privacy.contract import DataContract

__all__ = ["UNNAMED_SUBJECT", "ConsentStore", "SqlConsentStore", "consent_events", "consent_pushes",
           "subject_devices"]

#: The audit log's name for a subject when the store has no pseudonyms (unit tests): never the subject id.
UNNAMED_SUBJECT = "subject"

subject_devices = Table(
    "privacy_subject_devices",
    metadata,
    Column("subject_id", String(128), nullable=False),
    Column("device_id", String(64), nullable=False, unique=True),
    Column("linked_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("subject_id", "device_id"),
)

consent_events = Table(
    "privacy_consent_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subject_id", String(128), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
)

consent_pushes = Table(
    "privacy_consent_pushes",
    metadata,
    Column("device_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("config_sha256", LargeBinary(32), nullable=False),
    Column("pushed_at", DateTime(timezone=True), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=True),  # from the device's ack
    Column("acked_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("device_id", "version"),
)


class ConsentStore(Protocol):
    """Data subjects, their consent history, and the configurations pushed to their devices."""

    def link_device(self, subject_id: str, device_id: str, at: datetime) -> None:
        """Record that ``subject_id`` owns ``device_id`` (a device has one owner)."""
        ...

    def devices_of(self, subject_id: str) -> list[str]: ...

    def subject_of(self, device_id: str) -> str | None: ...

    def consent_state(self, subject_id: str) -> ConsentState: ...

    def set_consent(self, subject_id: str, purpose: str, granted: bool, at: datetime, *, actor: str,
                    contract: DataContract | None = None,
                    effects: Sequence[OutboxMessage] = ()) -> ConsentState:
        """Grant or withdraw (RollbackError when older than the purpose's last decision)."""
        ...

    def consent_configs(self, subject_id: str, issued_at: datetime) -> list[ConsentConfig]:
        """Build, and record as pushed, each of the subject's devices' configuration."""
        ...

    def record_consent_ack(self, ack: ConsentAck, received_at: datetime) -> None:
        """Raises ConsentError when the acknowledged configuration was not pushed."""
        ...

    def unacknowledged_consent(self, *, pushed_before: datetime | None = None) -> list[tuple[str, int]]: ...


class SqlConsentStore(AuditedSqlStore):
    """Subjects, consent events and consent pushes on SQLite or PostgreSQL.

    The audit log names a subject only by the pseudonym ``subject_names``
    gives (ADR 0405); without one it names no subject at all.
    """

    subject_names: Callable[[str, datetime], str] | None = None

    def _audit_subject(self, subject_id: str, at: datetime) -> str:
        return self.subject_names(subject_id, at) if self.subject_names is not None else UNNAMED_SUBJECT

    def link_device(self, subject_id: str, device_id: str, at: datetime) -> None:
        """Record that ``subject_id`` owns ``device_id`` (a device has one owner)."""
        with self._engine.begin() as c:
            c.execute(delete(subject_devices).where(subject_devices.c.device_id == device_id))
            c.execute(
                subject_devices.insert().values(
                    subject_id=subject_id, device_id=device_id, linked_at=_utc(at)
                )
            )

    def devices_of(self, subject_id: str) -> list[str]:
        """Devices owned by ``subject_id``."""
        with self._engine.connect() as c:
            return sorted(
                r[0]
                for r in c.execute(
                    select(subject_devices.c.device_id).where(subject_devices.c.subject_id == subject_id)
                )
            )

    def subject_of(self, device_id: str) -> str | None:
        """Owner of ``device_id``, if known."""
        with self._engine.connect() as c:
            return c.execute(
                select(subject_devices.c.subject_id).where(subject_devices.c.device_id == device_id)
            ).scalar()

    def consent_state(self, subject_id: str) -> ConsentState:
        """The subject's current consent state (version = number of changes)."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(consent_events)
                .where(consent_events.c.subject_id == subject_id)
                .order_by(consent_events.c.id)
            ).all()
        decisions: dict[str, ConsentDecision] = {}
        for r in rows:
            decisions[r.purpose] = ConsentDecision(bool(r.granted), _aware(r.at))
        return ConsentState(subject_id, len(rows), MappingProxyType(decisions))

    def set_consent(
        self,
        subject_id: str,
        purpose: str,
        granted: bool,
        at: datetime,
        *,
        actor: str,
        contract: DataContract | None = None,
        effects: Sequence[OutboxMessage] = (),
    ) -> ConsentState:
        """Grant or withdraw consent for a purpose; logs a ``consent.changed`` event.

        Args:
            contract: When given, ``purpose`` must be declared in it.
            effects: Outbox rows written in the same transaction (the consent push).

        Raises:
            PolicyDenied: ``purpose`` is not declared in ``contract``.
            RollbackError: ``at`` is older than the purpose's last decision.
        """
        if contract is not None:
            contract.purpose(purpose)
        at = _utc(at)
        before = self.consent_state(subject_id)
        after = before.grant(purpose, at) if granted else before.withdraw(purpose, at)
        with self._engine.begin() as c:
            c.execute(
                consent_events.insert().values(
                    subject_id=subject_id, purpose=purpose, granted=granted, at=at, actor=actor
                )
            )
            write_outbox(c, effects, at)
        self._record(
            AuditEvent(
                EventType.CONSENT_CHANGED.value,
                at,
                actor,
                self._audit_subject(subject_id, at),
                {
                    "purpose": purpose,
                    "granted": granted,
                    "version": after.version,
                    "devices": len(self.devices_of(subject_id)),
                },
            )
        )
        return after

    def consent_configs(self, subject_id: str, issued_at: datetime) -> list[ConsentConfig]:
        """Build, and record as pushed, the consent configuration of each of the subject's devices.

        The transport sends ``config.encode()`` to ``config.device_id``; the
        device answers with a :class:`~iotguard.privacy.ConsentAck` that
        :meth:`record_consent_ack` checks against this record.
        """
        state = self.consent_state(subject_id)
        configs = [state.to_config(d, issued_at) for d in self.devices_of(subject_id)]
        with self._engine.begin() as c:
            for cfg in configs:
                c.execute(
                    delete(consent_pushes).where(
                        consent_pushes.c.device_id == cfg.device_id, consent_pushes.c.version == state.version
                    )
                )
                c.execute(
                    consent_pushes.insert().values(
                        device_id=cfg.device_id,
                        version=state.version,
                        config_sha256=cfg.digest(),
                        pushed_at=_utc(issued_at),
                    )
                )
        return configs

    def record_consent_ack(self, ack: ConsentAck, received_at: datetime) -> None:
        """Check a device's acknowledgement against the configuration pushed to it, and store it.

        Raises:
            ConsentError: no such configuration was pushed to the device, or
                the device applied a different one.
        """
        cond = (consent_pushes.c.device_id == ack.device_id, consent_pushes.c.version == ack.version)
        with self._engine.begin() as c:
            pushed = c.execute(select(consent_pushes.c.config_sha256).where(*cond)).scalar()
            if pushed is None or bytes(pushed) != ack.config_sha256:
                raise ConsentError("device acknowledged a consent configuration the hub did not push")
            c.execute(
                update(consent_pushes)
                .where(*cond)
                .values(applied_at=_utc(ack.applied_at), acked_at=_utc(received_at))
            )

    def unacknowledged_consent(self, *, pushed_before: datetime | None = None) -> list[tuple[str, int]]:
        """(device, version) of pushed configurations the device has not acknowledged yet
        (pushed before ``pushed_before``, when given)."""
        q = select(consent_pushes.c.device_id, consent_pushes.c.version).where(consent_pushes.c.acked_at.is_(None))
        if pushed_before is not None:
            q = q.where(consent_pushes.c.pushed_at < pushed_before)
        with self._engine.connect() as c:
            rows = c.execute(q.order_by(consent_pushes.c.device_id, consent_pushes.c.version))
            return [(r[0], int(r[1])) for r in rows]

    def forget_consent_of(self, conn: Connection, subject_id: str, device_ids: Sequence[str]) -> int:
        """Erasure: delete the subject's consent history, pushes and device links in ``conn``'s transaction.

        Returns the number of consent events deleted.
        """
        conn.execute(delete(consent_pushes).where(consent_pushes.c.device_id.in_(list(device_ids))))
        n = conn.execute(delete(consent_events).where(consent_events.c.subject_id == subject_id)).rowcount or 0
        conn.execute(delete(subject_devices).where(subject_devices.c.subject_id == subject_id))
        return int(n)
