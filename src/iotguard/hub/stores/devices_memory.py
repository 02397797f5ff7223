"""The device registry in memory, for unit tests (passes the same contract as the SQL store)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from iotguard.errors import ConfigError, EnrollmentError, RevokedError, UnknownDeviceError
from iotguard.hub.outbox import MemoryOutboxStore, OutboxMessage
from iotguard.hub.stores.devices import DecommissionResult, DeviceRecord, EpochKey
from iotguard.hub.stores.telemetry import MemoryTelemetryStore

__all__ = ["MemoryDeviceStore"]


@dataclass
class _Token:
    device_id: str
    expires_at: datetime
    used_at: datetime | None = None


class MemoryDeviceStore:
    """:class:`~iotguard.hub.stores.devices.DeviceStore` in memory.

    Args:
        outbox: Receives the ``effects`` of each change.
        telemetry: Whose replay state re-provisioning and decommissioning reset.
    """

    def __init__(self, outbox: MemoryOutboxStore | None = None, telemetry: MemoryTelemetryStore | None = None) -> None:
        self.outbox = outbox if outbox is not None else MemoryOutboxStore()
        self.telemetry = telemetry if telemetry is not None else MemoryTelemetryStore()
        self._devices: dict[str, DeviceRecord] = {}
        self._tokens: dict[bytes, _Token] = {}
        self._epochs: dict[tuple[str, int], tuple[EpochKey, datetime | None]] = {}
        self._revoked: dict[str, tuple[str, datetime]] = {}
        self._meta: dict[str, str] = {}
        self._lock = threading.RLock()

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta_if_absent(self, key: str, value: str) -> str:
        with self._lock:
            return self._meta.setdefault(key, value)

    def create_device(self, device_id: str, model: str, segment: str, *, serial: str | None, now: datetime,
                      token_hash: bytes, token_expires_at: datetime,
                      effects: Sequence[OutboxMessage] = ()) -> None:
        with self._lock:
            if device_id in self._devices or token_hash in self._tokens:
                raise EnrollmentError(f"device id {device_id!r} already exists")
            self._devices[device_id] = DeviceRecord(device_id, model, serial, segment, "pending", None, None, None,
                                                    None, None, now, None, None)
            self._tokens[token_hash] = _Token(device_id, token_expires_at)
            self.outbox.enqueue(effects, now)

    def new_enrollment_token(self, device_id: str, token_hash: bytes, expires_at: datetime) -> None:
        with self._lock:
            self._tokens[token_hash] = _Token(device_id, expires_at)

    def get_device(self, device_id: str) -> DeviceRecord:
        try:
            return self._devices[device_id]
        except KeyError:
            raise UnknownDeviceError(f"unknown device {device_id!r}") from None

    def get_devices(self, device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
        return {d: self._devices[d] for d in device_ids if d in self._devices}

    def device_models(self) -> dict[str, str]:
        return {d.device_id: d.model for d in self._devices.values()}

    def expired_enrollment_tokens(self, now: datetime) -> list[tuple[bytes, str]]:
        with self._lock:
            return sorted(((h, t.device_id) for h, t in self._tokens.items()
                           if t.used_at is None and t.expires_at <= now), key=lambda x: (x[1], x[0]))

    def list_devices(self, *, status: str | None = None, limit: int = 1000, offset: int = 0) -> list[DeviceRecord]:
        rows = [d for _k, d in sorted(self._devices.items()) if not status or d.status == status]
        return rows[offset:offset + limit]

    def enroll(self, device_id: str, token_hash: bytes, *, now: datetime, identity_public_key: bytes,
               cert_pem: str, cert_serial: str, cert_not_after: datetime, suite: str, wrapped_key: bytes,
               transport_cert_serial: str | None = None, effects: Sequence[OutboxMessage] = ()) -> None:
        with self._lock:
            token = self._tokens.get(token_hash)
            if token is None or token.device_id != device_id or token.used_at is not None or \
                    token.expires_at <= now:
                raise EnrollmentError("enrollment token is invalid, used or expired")
            device = self._devices.get(device_id)
            if device is None or device.status != "pending":
                raise EnrollmentError("device is not awaiting enrollment")
            token.used_at = now
            self._devices[device_id] = replace(device, status="active", identity_public_key=identity_public_key,
                                               cert_pem=cert_pem, cert_serial=cert_serial,
                                               cert_not_after=cert_not_after, current_epoch=1, enrolled_at=now,
                                               transport_cert_serial=transport_cert_serial)
            self._epochs[(device_id, 1)] = (EpochKey(device_id, 1, suite, wrapped_key), None)
            self.outbox.enqueue(effects, now)

    def add_epoch(self, device_id: str, epoch: int, suite: str, wrapped_key: bytes, *, now: datetime,
                  effects: Sequence[OutboxMessage] = ()) -> None:
        with self._lock:
            device = self._devices.get(device_id)
            if device is None or device.status != "active" or device.current_epoch != epoch - 1:
                raise EnrollmentError("re-key refused: wrong epoch or inactive device")
            self._devices[device_id] = replace(device, current_epoch=epoch)
            for key, (ek, retired) in list(self._epochs.items()):
                if key[0] == device_id and retired is None:
                    self._epochs[key] = (ek, now)
            self._epochs[(device_id, epoch)] = (EpochKey(device_id, epoch, suite, wrapped_key), None)
            self.outbox.enqueue(effects, now)

    def renew_certificate(self, device_id: str, *, cert_pem: str, cert_serial: str, cert_not_after: datetime,
                          transport_cert_serial: str | None = None, now: datetime | None = None,
                          effects: Sequence[OutboxMessage] = ()) -> None:
        with self._lock:
            device = self._devices.get(device_id)
            if device is None or device.status != "active":
                raise RevokedError(f"device {device_id!r} is not active")
            transport = device.transport_cert_serial
            if transport_cert_serial is not None:
                if transport:
                    self._revoked.setdefault(transport, (device_id, now or cert_not_after))
                transport = transport_cert_serial
            self._devices[device_id] = replace(device, cert_pem=cert_pem, cert_serial=cert_serial,
                                               cert_not_after=cert_not_after, transport_cert_serial=transport)
            self.outbox.enqueue(effects, now or cert_not_after)

    def reprovision(self, device_id: str, *, token_hash: bytes, token_expires_at: datetime, now: datetime,
                    effects: Sequence[OutboxMessage] = ()) -> None:
        with self._lock:
            device = self.get_device(device_id)
            if device.status == "decommissioned":
                raise EnrollmentError("a decommissioned device cannot be re-provisioned")
            for serial in (device.cert_serial, device.transport_cert_serial):
                if serial:
                    self._revoked.setdefault(serial, (device_id, now))
            self._forget_keys(device_id)
            self._devices[device_id] = replace(device, status="pending", identity_public_key=None, cert_pem=None,
                                               cert_serial=None, cert_not_after=None, current_epoch=None,
                                               enrolled_at=None, revoked_at=None, transport_cert_serial=None)
            self._tokens[token_hash] = _Token(device_id, token_expires_at)
            self.outbox.enqueue(effects, now)

    def revoked_certificate_serials(self) -> list[tuple[str, datetime]]:
        return [(serial, at) for serial, (_d, at) in self._revoked.items()]

    def revoke_device(self, device_id: str, *, now: datetime, effects: Sequence[OutboxMessage] = ()) -> None:
        with self._lock:
            device = self.get_device(device_id)
            self._devices[device_id] = replace(device, status="revoked", revoked_at=now)
            self.outbox.enqueue(effects, now)

    def decommission(self, device_id: str, *, now: datetime,
                     effects: Callable[[tuple[int, ...], str | None], Sequence[OutboxMessage]] | None = None,
                     ) -> DecommissionResult:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ConfigError("now must be a timezone-aware UTC datetime")
        with self._lock:
            device = self.get_device(device_id)
            epochs = tuple(sorted(e for d, e in self._epochs if d == device_id))
            self._forget_keys(device_id)
            self._devices[device_id] = replace(device, status="decommissioned",
                                               revoked_at=device.revoked_at or now, current_epoch=None)
            for token in self._tokens.values():
                if token.device_id == device_id and token.used_at is None:
                    token.used_at = now
            if effects is not None:
                self.outbox.enqueue(effects(epochs, device.cert_serial), now)
            return DecommissionResult(device_id, epochs, device.cert_serial)

    def epoch_key(self, device_id: str, epoch: int) -> EpochKey | None:
        got = self._epochs.get((device_id, epoch))
        return None if got is None else got[0]

    def epoch_keys(self, device_ids: Sequence[str]) -> list[EpochKey]:
        wanted = set(device_ids)
        return [got[0] for (d, _e), got in sorted(self._epochs.items()) if d in wanted]

    def _forget_keys(self, device_id: str) -> None:
        for key in [k for k in self._epochs if k[0] == device_id]:
            del self._epochs[key]
        self.telemetry.forget_replay_state(device_id)
