"""The hub's persistent state through SQLAlchemy Core (SQLite or PostgreSQL).

One code path for both databases; the only dialect-specific piece is the
"insert, ignoring/merging conflicts" statement, chosen in
:func:`_upsert`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.errors import AuthenticationError, EnrollmentError, RevokedError, StorageError, UnknownDeviceError
from iotguard.hub.db import driver_error_summary, make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.schema import (
    api_tokens,
    devices,
    enrollment_tokens,
    hub_meta,
    key_epochs,
    readings,
    rejections,
    replay_windows,
    revoked_certificates,
)

__all__ = ["ROLES", "ApiToken", "DeviceRecord", "EpochKey", "HubStore", "StoredReading"]

#: Operator roles, least to most privileged.
ROLES = ("viewer", "operator", "security-admin", "privacy-officer", "analyst")


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
class StoredReading:
    """One stored reading."""

    id: int
    device_id: str
    epoch: int
    seq: int
    topic: str
    received_at: datetime
    body: bytes


@dataclass(frozen=True)
class ApiToken:
    """An authenticated operator token (never holds the secret)."""

    token_id: str
    name: str
    role: str


_READING_COLUMNS = ("device_id", "epoch", "seq", "topic", "received_at", "body")


class _SomeAlreadyStored(Exception):
    """Internal: a fast-path insert found rows that already exist (the transaction is rolled back)."""


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything iotguard stores is UTC.
    if dt is None or dt.tzinfo is not None:
        return dt
    from datetime import UTC

    return dt.replace(tzinfo=UTC)


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


def _token_digest(secret: str) -> bytes:
    return hashlib.sha256(b"iotguard-api-token-v1\x00" + secret.encode()).digest()


class HubStore:
    """Device registry, key epochs, replay state, readings, rejections, API tokens."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._insert_sql: tuple[str, list[str] | None] | None = None

    @classmethod
    def open(cls, url: str) -> HubStore:
        """Connect to ``url`` and apply pending migrations."""
        engine = make_engine(url)
        migrate(engine)
        return cls(engine)

    def _upsert(self, table: Any) -> Any:
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

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
        token_hash: bytes, token_expires_at: datetime,
    ) -> None:
        """Register a pending device with its one-time enrollment token.

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

    def list_devices(self, *, status: str | None = None, limit: int = 1000, offset: int = 0) -> list[DeviceRecord]:
        q = select(devices).order_by(devices.c.device_id).limit(limit).offset(offset)
        if status:
            q = q.where(devices.c.status == status)
        with self.engine.connect() as c:
            return [_device(r) for r in c.execute(q)]

    def enroll(
        self, device_id: str, token_hash: bytes, *, now: datetime, identity_public_key: bytes,
        cert_pem: str, cert_serial: str, cert_not_after: datetime, suite: str, wrapped_key: bytes,
        transport_cert_serial: str | None = None,
    ) -> None:
        """Consume the token and activate the device, atomically.

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

    def add_epoch(self, device_id: str, epoch: int, suite: str, wrapped_key: bytes, *, now: datetime) -> None:
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

    def renew_certificate(self, device_id: str, *, cert_pem: str, cert_serial: str, cert_not_after: datetime,
                          transport_cert_serial: str | None = None, now: datetime | None = None) -> None:
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
            if n == 1 and transport_cert_serial is not None and old is not None and old.transport_cert_serial:
                c.execute(self._upsert(revoked_certificates).values(
                    serial=old.transport_cert_serial, device_id=device_id,
                    revoked_at=now or cert_not_after).on_conflict_do_nothing())
        if n != 1:
            raise RevokedError(f"device {device_id!r} is not active")

    def reprovision(self, device_id: str, *, token_hash: bytes, token_expires_at: datetime, now: datetime) -> None:
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
            c.execute(delete(replay_windows).where(replay_windows.c.device_id == device_id))
            c.execute(update(devices).where(devices.c.device_id == device_id).values(
                status="pending", identity_public_key=None, cert_pem=None, cert_serial=None, cert_not_after=None,
                transport_cert_serial=None, current_epoch=None, enrolled_at=None, revoked_at=None))
            c.execute(enrollment_tokens.insert().values(
                token_hash=token_hash, device_id=device_id, expires_at=token_expires_at))

    def revoked_certificate_serials(self) -> list[tuple[str, datetime]]:
        """Serials recorded as revoked outside the device rows (re-provisioned devices)."""
        with self.engine.connect() as c:
            return [(r.serial, _aware(r.revoked_at) or r.revoked_at)
                    for r in c.execute(select(revoked_certificates))]

    def revoke_device(self, device_id: str, *, now: datetime) -> None:
        """Revoke a device: its data is refused from now on.

        Raises:
            UnknownDeviceError: no such device.
        """
        with self.engine.begin() as c:
            n = c.execute(update(devices).where(devices.c.device_id == device_id)
                          .values(status="revoked", revoked_at=now)).rowcount
        if n != 1:
            raise UnknownDeviceError(f"unknown device {device_id!r}")

    def epoch_key(self, device_id: str, epoch: int) -> EpochKey | None:
        with self.engine.connect() as c:
            row = c.execute(select(key_epochs).where(and_(
                key_epochs.c.device_id == device_id, key_epochs.c.epoch == epoch))).first()
        if row is None:
            return None
        m = row._mapping
        return EpochKey(m["device_id"], m["epoch"], m["suite"], m["wrapped_key"])

    def replay_window(self, device_id: str, epoch: int) -> tuple[int, bytes] | None:
        with self.engine.connect() as c:
            row = c.execute(select(replay_windows.c.top, replay_windows.c.bitmap).where(and_(
                replay_windows.c.device_id == device_id, replay_windows.c.epoch == epoch))).first()
        return None if row is None else (int(row[0]), bytes(row[1]))

    # -- ingest ----------------------------------------------------------

    def store_batch(
        self,
        rows: Sequence[dict[str, Any]],
        windows: Iterable[tuple[str, int, int, bytes]],
        rejected: dict[tuple[str, str], int],
        *,
        now: datetime,
    ) -> set[tuple[str, int, int]]:
        """Durably store a batch in one transaction.

        Args:
            rows: Readings (``device_id, epoch, seq, topic, received_at, body``).
            windows: Replay windows to persist: (device_id, epoch, top, bitmap).
            rejected: Rejection counts per (device_id, reason).

        Returns:
            The (device_id, epoch, seq) keys actually inserted; a key missing
            from it was already stored (by a concurrent hub) and is a replay.

        Raises:
            StorageError: the transaction failed; nothing was stored.
        """
        windows = list(windows)
        try:
            return self._store_batch(rows, windows, rejected, now=now, returning=False)
        except _SomeAlreadyStored:
            # Another hub stored some of these meanwhile (the replay window
            # normally prevents this): redo the batch learning exactly which.
            return self._store_batch(rows, windows, rejected, now=now, returning=True)

    def _store_batch(
        self,
        rows: Sequence[dict[str, Any]],
        windows: Iterable[tuple[str, int, int, bytes]],
        rejected: dict[tuple[str, str], int],
        *,
        now: datetime,
        returning: bool,
    ) -> set[tuple[str, int, int]]:
        inserted: set[tuple[str, int, int]] = set()
        try:
            with self.engine.begin() as c:
                if rows:
                    stmt = self._upsert(readings).on_conflict_do_nothing(index_elements=["device_id", "epoch", "seq"])
                    if returning:
                        stmt = stmt.returning(readings.c.device_id, readings.c.epoch, readings.c.seq)
                        for r in c.execute(stmt, list(rows)):
                            inserted.add((r[0], r[1], r[2]))
                    else:
                        # Fast path: the statement is compiled by SQLAlchemy for this
                        # dialect once; the driver's executemany then binds plain
                        # values (the batch shares one timestamp, converted once).
                        # If every row went in, we know which.
                        if c.exec_driver_sql(*self._fast_insert(rows, now)).rowcount != len(rows):
                            raise _SomeAlreadyStored
                        inserted = {(r["device_id"], r["epoch"], r["seq"]) for r in rows}
                win_rows = [{"device_id": d, "epoch": e, "top": t, "bitmap": b} for d, e, t, b in windows]
                if win_rows:
                    ins = self._upsert(replay_windows)
                    c.execute(ins.on_conflict_do_update(
                        index_elements=["device_id", "epoch"],
                        set_={"top": ins.excluded.top, "bitmap": ins.excluded.bitmap}), win_rows)
                if rejected:
                    self._count_rejections(c, rejected, now)
        except _SomeAlreadyStored:
            raise
        except Exception as exc:  # the driver's errors vary; the batch is retried whole
            raise StorageError(f"batch not stored: {driver_error_summary(exc)}") from None
        return inserted

    def _fast_insert(self, rows: Sequence[dict[str, Any]], now: datetime) -> tuple[str, Any]:
        if self._insert_sql is None:
            stmt = self._upsert(readings).on_conflict_do_nothing(index_elements=["device_id", "epoch", "seq"])
            compiled = stmt.compile(dialect=self.engine.dialect, column_keys=list(_READING_COLUMNS))
            order = list(compiled.positiontup or []) if compiled.positional else None
            self._insert_sql = (str(compiled), order)
        sql, order = self._insert_sql
        ts_proc = readings.c.received_at.type.dialect_impl(self.engine.dialect).bind_processor(self.engine.dialect)
        received = ts_proc(now) if ts_proc else now
        prepared = [{"device_id": r["device_id"], "epoch": r["epoch"], "seq": r["seq"], "topic": r["topic"],
                     "received_at": received, "body": r["body"]} for r in rows]
        if order is None:
            return sql, prepared
        return sql, [tuple(p[k] for k in order) for p in prepared]

    def _count_rejections(self, c: Connection, rejected: dict[tuple[str, str], int], now: datetime) -> None:
        ins = self._upsert(rejections)
        c.execute(ins.on_conflict_do_update(
            index_elements=["device_id", "reason"],
            set_={"count": rejections.c.count + ins.excluded.count, "last_at": ins.excluded.last_at}),
            [{"device_id": d, "reason": r, "count": n, "first_at": now, "last_at": now}
             for (d, r), n in rejected.items()])

    def count_rejections(self, rejected: dict[tuple[str, str], int], *, now: datetime) -> None:
        """Add rejection counts outside a batch (e.g. from the API)."""
        if rejected:
            with self.engine.begin() as c:
                self._count_rejections(c, rejected, now)

    def rejection_totals(self) -> dict[str, int]:
        """Rejections per reason code over all devices."""
        with self.engine.connect() as c:
            rows = c.execute(select(rejections.c.reason, func.sum(rejections.c.count))
                             .group_by(rejections.c.reason))
            return {r[0]: int(r[1]) for r in rows}

    def reading_count(self, device_id: str | None = None) -> int:
        q = select(func.count()).select_from(readings)
        if device_id:
            q = q.where(readings.c.device_id == device_id)
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())

    def readings_after(self, after_id: int = 0, *, device_id: str | None = None,
                       limit: int = 1000) -> list[StoredReading]:
        """Readings with id greater than ``after_id``, oldest first."""
        q = select(readings).where(readings.c.id > after_id).order_by(readings.c.id).limit(limit)
        if device_id:
            q = q.where(readings.c.device_id == device_id)
        with self.engine.connect() as c:
            return [StoredReading(r.id, r.device_id, r.epoch, r.seq, r.topic,
                                  _aware(r.received_at) or r.received_at, bytes(r.body))
                    for r in c.execute(q)]

    def last_reading_id(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(func.coalesce(func.max(readings.c.id), 0))).scalar_one())

    # -- operator API tokens --------------------------------------------

    def create_api_token(self, name: str, role: str, *, now: datetime) -> str:
        """Create an operator API token; returns the secret, shown only once.

        Raises:
            AuthenticationError: unknown role.
        """
        if role not in ROLES:
            raise AuthenticationError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        token_id = secrets.token_hex(8)
        secret = f"igt_{token_id}_{secrets.token_urlsafe(32)}"
        with self.engine.begin() as c:
            c.execute(api_tokens.insert().values(
                token_id=token_id, token_hash=_token_digest(secret), name=name, role=role, created_at=now))
        return secret

    def revoke_api_token(self, token_id: str, *, now: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(update(api_tokens).where(api_tokens.c.token_id == token_id).values(revoked_at=now))

    def list_api_tokens(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [{"token_id": r.token_id, "name": r.name, "role": r.role,
                     "created_at": (_aware(r.created_at) or r.created_at).isoformat(),
                     "revoked": r.revoked_at is not None}
                    for r in c.execute(select(api_tokens).order_by(api_tokens.c.created_at))]

    def authenticate_api_token(self, secret: str) -> ApiToken:
        """Check a bearer token.

        Raises:
            AuthenticationError: unknown, malformed or revoked token.
        """
        parts = secret.split("_", 2)
        if len(parts) != 3 or parts[0] != "igt" or len(secret) > 128:
            raise AuthenticationError("malformed API token")
        with self.engine.connect() as c:
            row = c.execute(select(api_tokens).where(api_tokens.c.token_id == parts[1])).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(
            bytes(row.token_hash), _token_digest(secret)
        ):
            raise AuthenticationError("invalid API token")
        return ApiToken(row.token_id, row.name, row.role)
