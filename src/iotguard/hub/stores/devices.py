"""The device registry's tables: devices, enrollment tokens, key epochs, revoked serials, hub-wide values.

Replay windows belong to the telemetry store; re-provisioning and
decommissioning ask it (inside their transaction) to forget a device's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.errors import ConfigError, EnrollmentError, RevokedError, UnknownDeviceError
from iotguard.hub.outbox import OutboxMessage, write_outbox
from iotguard.hub.schema import devices, enrollment_tokens, hub_meta, key_epochs, revoked_certificates
from iotguard.hub.stores._sql import SqlStoreBase
from iotguard.hub.stores._sql import aware as _aware
from iotguard.hub.stores.telemetry import forget_replay_state

__all__ = ["DecommissionResult", "DeviceRecord", "DeviceStore", "EpochKey", "SqlDeviceStore"]


@dataclass(frozen=True)
class DeviceRecord:
    """A device in the registry."""

    device_id: str
    model: str
    serial: str | None
    segment: str
    status: str
    identity_public_key: bytes | None
    cert_pem: str | None
    cert_serial: str | None
    cert_not_after: datetime | None
    current_epoch: int | None
    created_at: datetime
    enrolled_at: datetime | None
    revoked_at: datetime | None
    #: Serial of the TLS client certificate of the device's transport key (ADR 0600).
    transport_cert_serial: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (no secrets exist in a device record)."""
        return {
            "device_id": self.device_id,
            "model": self.model,
            "serial": self.serial,
            "segment": self.segment,
            "status": self.status,
            "cert_serial": self.cert_serial,
            "transport_cert_serial": self.transport_cert_serial,
            "cert_not_after": self.cert_not_after.isoformat() if self.cert_not_after else None,
            "current_epoch": self.current_epoch,
            "created_at": self.created_at.isoformat(),
            "enrolled_at": self.enrolled_at.isoformat() if self.enrolled_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class EpochKey:
    """A (device, epoch) session key, still wrapped."""

    device_id: str
    epoch: int
    suite: str
    wrapped_key: bytes



@dataclass(frozen=True)
class DecommissionResult:
    """What :meth:`HubStore.decommission` erased.

    Attributes:
        device_id: The device.
        erased_epochs: Session-key epochs whose wrapped keys were deleted.
        cert_serial: The certificate serial to list in the CRL (hex), if any.
    """

    device_id: str
    erased_epochs: tuple[int, ...]
    cert_serial: str | None


def _device(row: Any) -> DeviceRecord:
    m = row._mapping
    return DeviceRecord(
        device_id=m["device_id"], model=m["model"], serial=m["serial"], segment=m["segment"],
        status=m["status"], identity_public_key=m["identity_public_key"], cert_pem=m["cert_pem"],
        cert_serial=m["cert_serial"], cert_not_after=_aware(m["cert_not_after"]),
        current_epoch=m["current_epoch"], created_at=_aware(m["created_at"]) or m["created_at"],
        enrolled_at=_aware(m["enrolled_at"]), revoked_at=_aware(m["revoked_at"]),
        transport_cert_serial=m["transport_cert_serial"],
    )



class DeviceStore(Protocol):
    """The device registry: devices, their enrollment tokens, key epochs and revoked serials.

    Changing methods take ``effects``: outbox rows written in the same
    transaction as the change.
    """

    def get_meta(self, key: str) -> str | None: ...

    def set_meta_if_absent(self, key: str, value: str) -> str:
        """Set ``key`` unless another process did first; returns the stored value."""
        ...

    def create_device(self, device_id: str, model: str, segment: str, *, serial: str | None, now: datetime,
                      token_hash: bytes, token_expires_at: datetime,
                      effects: Sequence[OutboxMessage] = ()) -> None: ...

    def new_enrollment_token(self, device_id: str, token_hash: bytes, expires_at: datetime) -> None: ...

    def get_device(self, device_id: str) -> DeviceRecord: ...

    def get_devices(self, device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
        """The records of those of ``device_ids`` that exist, in one round trip."""
        ...

    def device_models(self) -> dict[str, str]: ...

    def expired_enrollment_tokens(self, now: datetime) -> list[tuple[bytes, str]]:
        """``(token hash, device id)`` of unused enrollment tokens expired by ``now``."""
        ...

    def list_devices(self, *, status: str | None = None, limit: int = 1000,
                     offset: int = 0) -> list[DeviceRecord]: ...

    def enroll(self, device_id: str, token_hash: bytes, *, now: datetime, identity_public_key: bytes,
               cert_pem: str, cert_serial: str, cert_not_after: datetime, suite: str, wrapped_key: bytes,
               transport_cert_serial: str | None = None, effects: Sequence[OutboxMessage] = ()) -> None: ...

    def add_epoch(self, device_id: str, epoch: int, suite: str, wrapped_key: bytes, *, now: datetime,
                  effects: Sequence[OutboxMessage] = ()) -> None: ...

    def renew_certificate(self, device_id: str, *, cert_pem: str, cert_serial: str, cert_not_after: datetime,
                          transport_cert_serial: str | None = None, now: datetime | None = None,
                          effects: Sequence[OutboxMessage] = ()) -> None:
        """Replace the operational (and transport) certificate; the superseded transport serial goes on the CRL."""
        ...

    def reprovision(self, device_id: str, *, token_hash: bytes, token_expires_at: datetime, now: datetime,
                    effects: Sequence[OutboxMessage] = ()) -> None: ...

    def revoked_certificate_serials(self) -> list[tuple[str, datetime]]: ...

    def revoke_device(self, device_id: str, *, now: datetime, effects: Sequence[OutboxMessage] = ()) -> None: ...

    def decommission(self, device_id: str, *, now: datetime,
                     effects: Callable[[tuple[int, ...], str | None], Sequence[OutboxMessage]] | None = None,
                     ) -> DecommissionResult: ...

    def epoch_key(self, device_id: str, epoch: int) -> EpochKey | None: ...

    def epoch_keys(self, device_ids: Sequence[str]) -> list[EpochKey]:
        """Every key epoch of these devices, in one round trip (ingest's first sight of many devices)."""
        ...


class SqlDeviceStore(SqlStoreBase):
    """Device registry on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self._bind(engine)

    # -- hub-wide values -------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(hub_meta.c.value).where(hub_meta.c.key == key)).scalar_one_or_none()

    def set_meta_if_absent(self, key: str, value: str) -> str:
        """Set ``key`` unless another process did first; returns the stored value."""
        with self.engine.begin() as c:
            c.execute(self._upsert(hub_meta).values(key=key, value=value).on_conflict_do_nothing())
            return str(c.execute(select(hub_meta.c.value).where(hub_meta.c.key == key)).scalar_one())

    # -- registry --------------------------------------------------------

    def create_device(
        self, device_id: str, model: str, segment: str, *, serial: str | None, now: datetime,
        token_hash: bytes, token_expires_at: datetime, effects: Sequence[OutboxMessage] = (),
    ) -> None:
        """Register a pending device with its one-time enrollment token (and its outbox ``effects``).

        Raises:
            EnrollmentError: the device id is taken.
        """
        try:
            with self.engine.begin() as c:
                c.execute(devices.insert().values(
                    device_id=device_id, model=model, serial=serial, segment=segment, status="pending",
                    created_at=now,
                ))
                c.execute(enrollment_tokens.insert().values(
                    token_hash=token_hash, device_id=device_id, expires_at=token_expires_at,
                ))
                write_outbox(c, effects, now)
        except SqlIntegrityError:
            raise EnrollmentError(f"device id {device_id!r} already exists") from None

    def new_enrollment_token(self, device_id: str, token_hash: bytes, expires_at: datetime) -> None:
        """Issue another token for a pending device (re-provisioning)."""
        with self.engine.begin() as c:
            c.execute(enrollment_tokens.insert().values(
                token_hash=token_hash, device_id=device_id, expires_at=expires_at))

    def get_device(self, device_id: str) -> DeviceRecord:
        """Raises UnknownDeviceError when absent."""
        with self.engine.connect() as c:
            row = c.execute(select(devices).where(devices.c.device_id == device_id)).first()
        if row is None:
            raise UnknownDeviceError(f"unknown device {device_id!r}")
        return _device(row)

    def get_devices(self, device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
        if not device_ids:
            return {}
        with self.engine.connect() as c:
            rows = c.execute(select(devices).where(devices.c.device_id.in_(list(device_ids)))).all()
        return {row.device_id: _device(row) for row in rows}

    def device_models(self) -> dict[str, str]:
        """Every registered device's model (retention looks up each reading's contract)."""
        with self.engine.connect() as c:
            return {r[0]: r[1] for r in c.execute(select(devices.c.device_id, devices.c.model))}

    def expired_enrollment_tokens(self, now: datetime) -> list[tuple[bytes, str]]:
        with self.engine.connect() as c:
            return [(bytes(r.token_hash), r.device_id) for r in c.execute(
                select(enrollment_tokens.c.token_hash, enrollment_tokens.c.device_id)
                .where(and_(enrollment_tokens.c.used_at.is_(None), enrollment_tokens.c.expires_at <= now))
                .order_by(enrollment_tokens.c.device_id))]

    def list_devices(self, *, status: str | None = None, limit: int = 1000, offset: int = 0) -> list[DeviceRecord]:
        q = select(devices).order_by(devices.c.device_id).limit(limit).offset(offset)
        if status:
            q = q.where(devices.c.status == status)
        with self.engine.connect() as c:
            return [_device(r) for r in c.execute(q)]

    def enroll(
        self, device_id: str, token_hash: bytes, *, now: datetime, identity_public_key: bytes,
        cert_pem: str, cert_serial: str, cert_not_after: datetime, suite: str, wrapped_key: bytes,
        transport_cert_serial: str | None = None, effects: Sequence[OutboxMessage] = (),
    ) -> None:
        """Consume the token and activate the device, atomically (with its outbox ``effects``).

        Raises:
            EnrollmentError: token unknown, used, expired or for another device;
                device not pending.
        """
        with self.engine.begin() as c:
            used = c.execute(
                update(enrollment_tokens)
                .where(and_(
                    enrollment_tokens.c.token_hash == token_hash,
                    enrollment_tokens.c.device_id == device_id,
                    enrollment_tokens.c.used_at.is_(None),
                    enrollment_tokens.c.expires_at > now,
                ))
                .values(used_at=now)
            ).rowcount
            if used != 1:
                raise EnrollmentError("enrollment token is invalid, used or expired")
            activated = c.execute(
                update(devices)
                .where(and_(devices.c.device_id == device_id, devices.c.status == "pending"))
                .values(status="active", identity_public_key=identity_public_key, cert_pem=cert_pem,
                        cert_serial=cert_serial, cert_not_after=cert_not_after, current_epoch=1,
                        enrolled_at=now, transport_cert_serial=transport_cert_serial)
            ).rowcount
            if activated != 1:
                raise EnrollmentError("device is not awaiting enrollment")
            c.execute(key_epochs.insert().values(
                device_id=device_id, epoch=1, suite=suite, wrapped_key=wrapped_key, created_at=now))
            write_outbox(c, effects, now)

    def add_epoch(self, device_id: str, epoch: int, suite: str, wrapped_key: bytes, *, now: datetime,
                  effects: Sequence[OutboxMessage] = ()) -> None:
        """Record a new key epoch and make it current (re-keying).

        Raises:
            EnrollmentError: the epoch is not exactly current + 1 or the device is not active.
        """
        with self.engine.begin() as c:
            n = c.execute(
                update(devices)
                .where(and_(devices.c.device_id == device_id, devices.c.status == "active",
                            devices.c.current_epoch == epoch - 1))
                .values(current_epoch=epoch)
            ).rowcount
            if n != 1:
                raise EnrollmentError("re-key refused: wrong epoch or inactive device")
            c.execute(update(key_epochs).where(and_(key_epochs.c.device_id == device_id,
                                                    key_epochs.c.retired_at.is_(None)))
                      .values(retired_at=now))
            c.execute(key_epochs.insert().values(
                device_id=device_id, epoch=epoch, suite=suite, wrapped_key=wrapped_key, created_at=now))
            write_outbox(c, effects, now)

    def renew_certificate(self, device_id: str, *, cert_pem: str, cert_serial: str, cert_not_after: datetime,
                          transport_cert_serial: str | None = None, now: datetime | None = None,
                          effects: Sequence[OutboxMessage] = ()) -> None:
        """Replace an active device's operational certificate (same key, new validity).

        With ``transport_cert_serial`` the transport certificate is replaced
        too, and the one it supersedes goes on the CRL (its key may be gone
        with an old file; it must not stay usable at the broker).

        Raises:
            RevokedError: the device is not active.
        """
        values: dict[str, Any] = {"cert_pem": cert_pem, "cert_serial": cert_serial, "cert_not_after": cert_not_after}
        if transport_cert_serial is not None:
            values["transport_cert_serial"] = transport_cert_serial
        with self.engine.begin() as c:
            old = c.execute(select(devices.c.transport_cert_serial).where(devices.c.device_id == device_id)).first()
            n = c.execute(update(devices).where(and_(devices.c.device_id == device_id, devices.c.status == "active"))
                          .values(**values)).rowcount
            if n != 1:
                raise RevokedError(f"device {device_id!r} is not active")
            if transport_cert_serial is not None and old is not None and old.transport_cert_serial:
                c.execute(self._upsert(revoked_certificates).values(
                    serial=old.transport_cert_serial, device_id=device_id,
                    revoked_at=now or cert_not_after).on_conflict_do_nothing())
            write_outbox(c, effects, now or cert_not_after)

    def reprovision(self, device_id: str, *, token_hash: bytes, token_expires_at: datetime, now: datetime,
                    effects: Sequence[OutboxMessage] = ()) -> None:
        """Reset a device to *pending* with a new enrollment token, erasing its keys and replay state.

        Its current certificate serial stays on the CRL.

        Raises:
            UnknownDeviceError: no such device.
            EnrollmentError: the device was decommissioned (that is final).
        """
        with self.engine.begin() as c:
            row = c.execute(select(devices.c.status, devices.c.cert_serial, devices.c.transport_cert_serial)
                            .where(devices.c.device_id == device_id)).first()
            if row is None:
                raise UnknownDeviceError(f"unknown device {device_id!r}")
            if row.status == "decommissioned":
                raise EnrollmentError("a decommissioned device cannot be re-provisioned")
            for serial in (row.cert_serial, row.transport_cert_serial):
                if serial:
                    c.execute(self._upsert(revoked_certificates).values(
                        serial=serial, device_id=device_id, revoked_at=now).on_conflict_do_nothing())
            c.execute(delete(key_epochs).where(key_epochs.c.device_id == device_id))
            forget_replay_state(c, device_id)
            c.execute(update(devices).where(devices.c.device_id == device_id).values(
                status="pending", identity_public_key=None, cert_pem=None, cert_serial=None, cert_not_after=None,
                transport_cert_serial=None, current_epoch=None, enrolled_at=None, revoked_at=None))
            c.execute(enrollment_tokens.insert().values(
                token_hash=token_hash, device_id=device_id, expires_at=token_expires_at))
            write_outbox(c, effects, now)

    def revoked_certificate_serials(self) -> list[tuple[str, datetime]]:
        """Serials recorded as revoked outside the device rows (re-provisioned devices)."""
        with self.engine.connect() as c:
            return [(r.serial, _aware(r.revoked_at) or r.revoked_at)
                    for r in c.execute(select(revoked_certificates))]

    def revoke_device(self, device_id: str, *, now: datetime, effects: Sequence[OutboxMessage] = ()) -> None:
        """Revoke a device: its data is refused from now on.

        Raises:
            UnknownDeviceError: no such device.
        """
        with self.engine.begin() as c:
            n = c.execute(update(devices).where(devices.c.device_id == device_id)
                          .values(status="revoked", revoked_at=now)).rowcount
            if n != 1:
                raise UnknownDeviceError(f"unknown device {device_id!r}")
            write_outbox(c, effects, now)

    def decommission(self, device_id: str, *, now: datetime,
                     effects: Callable[[tuple[int, ...], str | None], Sequence[OutboxMessage]] | None = None,
                     ) -> DecommissionResult:
        """Retire a device for good and crypto-erase its session keys.

        In one transaction: the device becomes ``decommissioned`` (its
        certificate serial then goes into the CRL, see
        :func:`iotguard.hub.mosquitto.revoked_serials`), every wrapped session
        key and replay window of it is deleted, its unused enrollment tokens
        are burnt, and the outbox rows ``effects`` builds from the erased
        epochs and the certificate serial are written. On SQLite
        ``secure_delete`` overwrites the freed pages and the WAL is
        checkpointed, so the wrapped keys do not linger in the file; on
        PostgreSQL the dead tuples remain until ``VACUUM``. Readings already
        stored stay (they are governed by retention and erasure, not by the
        device's lifecycle).

        Raises:
            UnknownDeviceError: no such device.
            ConfigError: naive ``now``.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ConfigError("now must be a timezone-aware UTC datetime")
        sqlite_db = self._dialect == "sqlite"
        with self.engine.begin() as c:
            if sqlite_db:
                c.exec_driver_sql("PRAGMA secure_delete = ON")
            row = c.execute(select(devices.c.cert_serial, devices.c.revoked_at)
                            .where(devices.c.device_id == device_id)).first()
            if row is None:
                raise UnknownDeviceError(f"unknown device {device_id!r}")
            c.execute(update(devices).where(devices.c.device_id == device_id).values(
                status="decommissioned", revoked_at=row.revoked_at or now, current_epoch=None))
            epochs = tuple(sorted(r[0] for r in c.execute(
                select(key_epochs.c.epoch).where(key_epochs.c.device_id == device_id))))
            c.execute(delete(key_epochs).where(key_epochs.c.device_id == device_id))
            forget_replay_state(c, device_id)
            c.execute(update(enrollment_tokens).where(and_(enrollment_tokens.c.device_id == device_id,
                                                           enrollment_tokens.c.used_at.is_(None)))
                      .values(used_at=now))
            if effects is not None:
                write_outbox(c, effects(epochs, row.cert_serial), now)
        if sqlite_db:
            with self.engine.connect() as c:
                c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return DecommissionResult(device_id, epochs, row.cert_serial)

    def epoch_key(self, device_id: str, epoch: int) -> EpochKey | None:
        with self.engine.connect() as c:
            row = c.execute(select(key_epochs).where(and_(
                key_epochs.c.device_id == device_id, key_epochs.c.epoch == epoch))).first()
        if row is None:
            return None
        m = row._mapping
        return EpochKey(m["device_id"], m["epoch"], m["suite"], m["wrapped_key"])

    def epoch_keys(self, device_ids: Sequence[str]) -> list[EpochKey]:
        ids = sorted(set(device_ids))
        out: list[EpochKey] = []
        with self.engine.connect() as c:
            for i in range(0, len(ids), 1000):
                for row in c.execute(select(key_epochs).where(key_epochs.c.device_id.in_(ids[i:i + 1000]))):
                    m = row._mapping
                    out.append(EpochKey(m["device_id"], m["epoch"], m["suite"], m["wrapped_key"]))
        return out

