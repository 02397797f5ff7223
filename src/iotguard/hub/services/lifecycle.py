"""Device lifecycle on the hub: add, enroll, re-key, renew, revoke, re-provision, decommission.

Sits at the edge: combines the pure protocol in :mod:`iotguard.identity`
with the store, the hub's key store and the fleet CA. Every change writes its
audit events (and, when the hub manages a Mosquitto broker, a broker access
rewrite) to the outbox in the change's own transaction.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from iotguard.audit import AuditEvent, EventType
from iotguard.audit.custody import CustodyCheck
from iotguard.audit.provenance import manufacturing_record
from iotguard.channel import SessionKeys, split_session_keys
from iotguard.clock import Clock, SystemClock
from iotguard.config import HubConfig
from iotguard.crypto import get_suite
from iotguard.errors import (
    CustodyError,
    EnrollmentError,
    IntegrityError,
    MalformedError,
    RevokedError,
    UnknownDeviceError,
)
from iotguard.hub.outbox import OutboxMessage, OutboxStore
from iotguard.hub.services.audit import audit_message
from iotguard.hub.services.broker_access import EmbeddedBrokerLink, broker_access_message
from iotguard.hub.services.posture import PostureService
from iotguard.hub.stores.devices import DecommissionResult, DeviceRecord, DeviceStore
from iotguard.identity import (
    EnrollmentCode,
    FleetCA,
    VerifiedRequest,
    b64d,
    b64e,
    derive_hub_session,
    hub_response_message,
    negotiate_suite,
    new_enrollment_secret,
    request_transcript,
    token_hash,
    verify_signature,
)
from iotguard.keys import KeyKind, KeyStore, KeyStoreConfig, open_key_store
from iotguard.privacy import CONTRACT_NAME_RE

__all__ = ["DeviceLifecycle", "open_hub_keys"]

log = logging.getLogger(__name__)

_STORAGE_KEY = "storage-wrap"
_CA_META = "fleet_ca_pem"
#: Identities a device may never hold: its transport certificate would make it the hub on the broker.
_RESERVED_IDS = frozenset({"iotguard-hub"})
_DEVICE_ID_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def open_hub_keys(cfg: HubConfig) -> KeyStore:
    """The hub's key store as configured: a software secure element in ``<data_dir>/keys`` or a PKCS#11 HSM."""
    return open_key_store(KeyStoreConfig(backend=cfg.keystore_backend, pkcs11_module=cfg.pkcs11_module,
                                         pkcs11_token=cfg.pkcs11_token, pkcs11_pin_env=cfg.pkcs11_pin_env),
                          default_directory=Path(cfg.data_dir) / "keys")


@dataclass
class _CachedDevice:
    record: DeviceRecord
    loaded_at: float
    keys: dict[int, tuple[str, SessionKeys]]


class DeviceLifecycle:
    """Device lifecycle on the hub, plus the cache ingest reads devices through.

    Args:
        store: The device registry tables.
        keystore: The hub key store (CA key, session-key wrapping key).
        cfg: Hub settings.
        clock: Time source.
        outbox: Where audit events and broker access rewrites are queued
            (standalone events; changes write theirs through ``store``).
        posture: Kept in step after every change (None: no posture, e.g. ingest-only tools).
        broker_link: This process's embedded broker, told after every change.
        custody: Verifies the device's party-signed chain of custody at enrollment
            (``hub.custody_required``).
    """

    def __init__(self, store: DeviceStore, keystore: KeyStore, cfg: HubConfig, clock: Clock | None = None,
                 *, outbox: OutboxStore, posture: PostureService | None = None,
                 broker_link: EmbeddedBrokerLink | None = None, custody: CustodyCheck | None = None) -> None:
        self.store = store
        #: Verifies the device's chain of custody at enrollment (``hub.custody_required``).
        self.custody = custody
        self.keystore = keystore
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.outbox = outbox
        self.posture = posture
        self.broker_link = broker_link
        self.broker_managed = bool(cfg.mosquitto_dir)
        if not keystore.has_key(_STORAGE_KEY):
            keystore.generate(_STORAGE_KEY, KeyKind.AES256)
        self.ca = self._load_or_create_ca()
        self._cache: dict[str, _CachedDevice] = {}
        #: When the last ingest batch's prefetch read its devices (see :meth:`session`).
        self._last_prefetch = -1.0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(device_id)`` after every registry change of a device (enrollment, renewal, revocation)."""
        self._listeners.append(listener)

    def _load_or_create_ca(self) -> FleetCA:
        pem = self.store.get_meta(_CA_META)
        if pem is None:
            if self.keystore.has_key("fleet-ca"):
                raise EnrollmentError("hub key store has a CA key but the database has no CA certificate")
            ca = FleetCA.create(self.keystore, name="iotguard fleet CA", now=self.clock.now())
            stored = self.store.set_meta_if_absent(_CA_META, ca.certificate_pem.decode())
            if stored != ca.certificate_pem.decode():
                raise EnrollmentError("another hub created the CA concurrently with a different key")
            log.info("created fleet CA %s", ca.fingerprint)
            return ca
        return FleetCA(self.keystore, pem.encode())

    def _effects(self, *events: AuditEvent, broker: str | None = None,
                 device_id: str = "") -> list[OutboxMessage]:
        out = [audit_message(e) for e in events]
        if broker is not None and self.broker_managed:
            out.append(broker_access_message(device_id, broker))
        return out

    def _changed(self, device_id: str) -> None:
        with self._lock:
            self._cache.pop(device_id, None)
        for listener in self._listeners:
            listener(device_id)
        if self.posture is not None:
            self.posture.sync(device_id)
        if self.broker_link is not None:
            self.broker_link.changed()

    # -- operator actions ------------------------------------------------

    def add_device(self, device_id: str, model: str, *, segment: str = "default",
                   serial: str | None = None, actor: str = "operator") -> EnrollmentCode:
        """Register a device and return its one-time enrollment code.

        Raises:
            MalformedError: bad device id or model.
            EnrollmentError: id already taken.
        """
        if not device_id or len(device_id) > 64 or not set(device_id) <= _DEVICE_ID_OK \
                or not device_id[0].isalnum():
            raise MalformedError("device id must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
        if device_id in _RESERVED_IDS:
            raise MalformedError(f"device id {device_id!r} is reserved (the hub's own MQTT identity)")
        if CONTRACT_NAME_RE.fullmatch(model) is None:
            raise MalformedError("model must be 1-64 of [a-z0-9._-], starting alphanumeric")
        if not segment or len(segment) > 64 or not set(segment) <= _DEVICE_ID_OK or not segment[0].isalnum():
            raise MalformedError("segment must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
        secret = new_enrollment_secret()
        now = self.clock.now()
        self.store.create_device(
            device_id, model, segment, serial=serial, now=now, token_hash=token_hash(secret),
            token_expires_at=now + timedelta(seconds=self.cfg.enrollment_token_ttl_s),
            effects=self._effects(AuditEvent("device.registered", now, actor, device_id,
                                             {"model": model, "segment": segment, "serial": serial or ""})),
        )
        return EnrollmentCode(device_id, secret, self.ca.fingerprint)

    def device(self, device_id: str) -> DeviceRecord:
        """One registered device.

        Raises:
            UnknownDeviceError: no such device.
        """
        return self.store.get_device(device_id)

    def devices(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> list[DeviceRecord]:
        """Registered devices by id (``limit`` at most 1000)."""
        return self.store.list_devices(status=status, limit=max(1, min(limit, 1000)), offset=max(0, offset))

    def revoke(self, device_id: str, *, actor: str = "operator", reason: str = "") -> None:
        """Revoke a device; ingest refuses its data within ``device_cache_ttl_s`` (plus the batch in progress)."""
        now = self.clock.now()
        device = self.store.get_device(device_id)
        self.store.revoke_device(device_id, now=now, effects=self._effects(
            AuditEvent(EventType.CERT_REVOKED, now, actor, device_id,
                       {"cert_serial": device.cert_serial or "", "reason": reason}),
            broker="revoked", device_id=device_id))
        self._changed(device_id)

    def reprovision(self, device_id: str, *, actor: str = "operator") -> EnrollmentCode:
        """Reset a device for a fresh enrollment (new owner, repair, suspected compromise).

        Its keys and replay state are erased, its old certificate stays on the
        CRL, and a new one-time enrollment code is returned.

        Raises:
            UnknownDeviceError: no such device.
            EnrollmentError: the device was decommissioned.
        """
        now = self.clock.now()
        old = self.store.get_device(device_id)
        secret = new_enrollment_secret()
        self.store.reprovision(device_id, token_hash=token_hash(secret), now=now,
                               token_expires_at=now + timedelta(seconds=self.cfg.enrollment_token_ttl_s),
                               effects=self._effects(
                                   AuditEvent("device.reprovisioned", now, actor, device_id,
                                              {"old_cert_serial": old.cert_serial or "", "old_status": old.status}),
                                   broker="reprovisioned", device_id=device_id))
        self._changed(device_id)
        return EnrollmentCode(device_id, secret, self.ca.fingerprint)

    def renew(self, request: VerifiedRequest) -> dict[str, Any]:
        """Issue a fresh operational certificate for the same identity key.

        ``request`` passed the device plane (signature, freshness, status,
        unexpired certificate, Cedar ``renew`` with the device's posture).

        Raises:
            RevokedError, UnknownDeviceError: the device changed meanwhile.
        """
        device_id = request.device_id
        transcript = request.transcript
        transport_pk = bytes(request.body["transport_public_key"])
        device = self.store.get_device(device_id)
        if device.status != "active" or device.identity_public_key is None:
            raise RevokedError(f"device {device_id!r} is {device.status}")
        now = self.clock.now()
        cert = self.ca.issue_device_certificate(device_id, device.identity_public_key, now=now,
                                                validity=timedelta(days=self.cfg.cert_validity_days),
                                                segment=device.segment)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        serial = format(cert.serial_number, "x")
        transport_pem, transport_serial = self._issue_transport(device_id, transport_pk, device.segment, now)
        self.store.renew_certificate(device_id, cert_pem=cert_pem, cert_serial=serial,
                                     cert_not_after=cert.not_valid_after_utc,
                                     transport_cert_serial=transport_serial, now=now, effects=self._effects(
                                         AuditEvent(EventType.CERT_RENEWED, now, device_id, device_id,
                                                    {"cert_serial": serial,
                                                     "previous_serial": device.cert_serial or "",
                                                     "transport_cert_serial": transport_serial,
                                                     "previous_transport_serial": device.transport_cert_serial or "",
                                                     "not_after": cert.not_valid_after_utc.isoformat()}),
                                         broker="renewed", device_id=device_id))
        self._changed(device_id)
        fields = {"device_id": device_id, "certificate_pem": cert_pem, "transport_certificate_pem": transport_pem}
        return {**fields, "signature": b64e(self.ca.sign(hub_response_message(transcript, fields)))}

    def tamper_report(self, request: VerifiedRequest) -> str:
        """Record a device's tamper report (verified by the device plane); returns the device id.

        Its trust tier drops to ``failed`` so every enforcement point refuses it.
        """
        reason = str(request.body["reason"])[:128]
        now = self.clock.now()
        self.outbox.enqueue(self._effects(AuditEvent("device.tampered", now, request.device_id, request.device_id,
                                                     {"reason": reason,
                                                      "reported_ts": int(request.issued_at.timestamp())})), now)
        if self.posture is not None:
            self.posture.mark_tampered(request.device_id)
        return request.device_id

    def decommission(self, device_id: str, *, actor: str = "operator") -> DecommissionResult:
        """Retire a device: status ``decommissioned`` and its session keys crypto-erased.

        Raises:
            UnknownDeviceError: no such device.
        """
        now = self.clock.now()

        def effects(epochs: tuple[int, ...], cert_serial: str | None) -> list[OutboxMessage]:
            return self._effects(AuditEvent("device.decommissioned", now, actor, device_id,
                                            {"erased_epochs": list(epochs), "cert_serial": cert_serial or ""}),
                                 AuditEvent(EventType.CERT_REVOKED, now, actor, device_id,
                                            {"cert_serial": cert_serial or "", "reason": "decommissioned"}),
                                 broker="decommissioned", device_id=device_id)

        result = self.store.decommission(device_id, now=now, effects=effects)
        self._changed(device_id)
        return result

    # -- device requests -------------------------------------------------

    def _wrap(self, device_id: str, epoch: int, keys: SessionKeys) -> bytes:
        return self.keystore.seal(_STORAGE_KEY, keys.uplink + keys.downlink, f"{device_id}/{epoch}".encode())

    def _unwrap(self, device_id: str, epoch: int, suite: str, wrapped: bytes) -> SessionKeys:
        raw = self.keystore.unseal(_STORAGE_KEY, wrapped, f"{device_id}/{epoch}".encode())
        return split_session_keys(raw, get_suite(suite).key_size)

    def enroll(self, req: dict[str, Any], *,
               authorize: Callable[[DeviceRecord], None] | None = None) -> dict[str, Any]:
        """Handle an enrollment request (JSON body from the device).

        ``authorize`` is called with the device's record once the proof of
        possession verified and before anything is issued (the device
        plane's Cedar decision); it refuses by raising.

        Raises:
            MalformedError: the request does not have the expected shape.
            EnrollmentError: bad token or proof of possession.
            PolicyDenied: ``authorize`` refused.
        """
        try:
            device_id = str(req["device_id"])
            secret = b64d(req["token"], what="token", length=32)
            identity_pk = b64d(req["identity_public_key"], what="identity key", length=32)
            kex_pk = b64d(req["kex_public_key"], what="kex key", length=32)
            transport_pk = b64d(req["transport_public_key"], what="transport key", length=32)
            suites = [str(s) for s in req["suites"]][:8]
            signature = b64d(req["signature"], what="signature", length=64)
        except (KeyError, TypeError) as exc:
            raise MalformedError(f"enrollment request: missing or bad field {exc}") from None
        th = token_hash(secret)
        transcript = request_transcript("enroll", {
            "device_id": device_id, "token_hash": th, "identity_public_key": identity_pk,
            "kex_public_key": kex_pk, "transport_public_key": transport_pk, "suites": suites,
        })
        try:
            verify_signature(identity_pk, signature, transcript)
        except IntegrityError:
            self._auth_failed(device_id, "bad_proof")
            raise EnrollmentError("proof of possession failed") from None
        if self.custody is not None:
            try:
                self.custody.check(device_id, identity_pk)
            except CustodyError as exc:
                self._auth_failed(device_id, exc.reason)
                raise
        suite = negotiate_suite(suites, self.cfg.allowed_suites)
        device = self.store.get_device(device_id)
        if authorize is not None:
            authorize(device)
        now = self.clock.now()
        cert = self.ca.issue_device_certificate(
            device_id, identity_pk, now=now, validity=timedelta(days=self.cfg.cert_validity_days),
            segment=device.segment)
        hub_pub, keys = derive_hub_session(device_id, 1, suite, kex_pk, transcript)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        serial = format(cert.serial_number, "x")
        transport_pem, transport_serial = self._issue_transport(device_id, transport_pk, device.segment, now)
        effects = self._effects(
            manufacturing_record(device_id, model=device.model, serial=device.serial or "",
                                 firmware="unknown", public_key=identity_pk, made_at=now, maker="hub.enrollment"),
            AuditEvent(EventType.DEVICE_ENROLLED, now, device_id, device_id,
                       {"model": device.model, "segment": device.segment, "suite": suite,
                        "identity_key_sha256": hashlib.sha256(identity_pk).digest()}),
            AuditEvent(EventType.CERT_ISSUED, now, "hub.ca", device_id,
                       {"cert_serial": serial, "not_after": cert.not_valid_after_utc.isoformat()}),
            AuditEvent(EventType.CERT_ISSUED, now, "hub.ca", device_id,
                       {"cert_serial": transport_serial, "usage": "transport"}),
            broker="enrolled", device_id=device_id)
        try:
            self.store.enroll(
                device_id, th, now=now, identity_public_key=identity_pk, cert_pem=cert_pem,
                cert_serial=serial, cert_not_after=cert.not_valid_after_utc,
                suite=suite, wrapped_key=self._wrap(device_id, 1, keys), transport_cert_serial=transport_serial,
                effects=effects)
        except EnrollmentError:
            self._auth_failed(device_id, "bad_token")
            raise
        self._changed(device_id)
        return self._signed_response(transcript, device, 1, suite, hub_pub, cert_pem, transport_pem)

    def rekey(self, request: VerifiedRequest) -> dict[str, Any]:
        """Move a device to its next key epoch, optionally with another suite.

        ``request`` passed the device plane (signature, freshness, status,
        certificate, Cedar ``rekey`` with the device's posture).

        Raises:
            EnrollmentError, RevokedError, UnknownDeviceError.
        """
        device_id = request.device_id
        epoch = int(request.body["epoch"])
        kex_pk = bytes(request.body["kex_public_key"])
        suites = [str(s) for s in request.body["suites"]]
        transcript = request.transcript
        device = self.store.get_device(device_id)
        if device.status != "active" or device.identity_public_key is None:
            raise RevokedError(f"device {device_id!r} is {device.status}")
        now = self.clock.now()
        suite = negotiate_suite(suites, self.cfg.allowed_suites)
        hub_pub, keys = derive_hub_session(device_id, epoch, suite, kex_pk, transcript)
        self.store.add_epoch(device_id, epoch, suite, self._wrap(device_id, epoch, keys), now=now,
                             effects=self._effects(AuditEvent("key.rotated", now, device_id, device_id,
                                                              {"epoch": epoch, "suite": suite})))
        self._changed(device_id)
        return self._signed_response(transcript, device, epoch, suite, hub_pub, device.cert_pem or "")

    def _issue_transport(self, device_id: str, transport_pk: bytes, segment: str, now: datetime) -> tuple[str, str]:
        """The TLS client certificate for a device's transport key (ADR 0600): (PEM, serial hex).

        Same profile as the operational certificate (CN = device id,
        ``clientAuth`` only, same validity), so a broker's username is the
        device id.
        """
        if transport_pk == b"\x00" * 32:
            raise MalformedError("transport key is not a valid Ed25519 public key")
        try:
            cert = self.ca.issue_device_certificate(device_id, transport_pk, now=now, segment=segment,
                                                    validity=timedelta(days=self.cfg.cert_validity_days))
        except ValueError:
            raise MalformedError("transport key is not a valid Ed25519 public key") from None
        return cert.public_bytes(serialization.Encoding.PEM).decode(), format(cert.serial_number, "x")

    def _auth_failed(self, device_id: str, reason: str) -> None:
        who = device_id if device_id and len(device_id) <= 64 else "unknown"
        now = self.clock.now()
        self.outbox.enqueue(self._effects(AuditEvent(EventType.AUTH_FAILED, now, who, who,
                                                     {"what": "enrollment", "reason": reason})), now)

    def _signed_response(self, transcript: bytes, device: DeviceRecord, epoch: int, suite: str,
                         hub_pub: bytes, cert_pem: str, transport_pem: str = "") -> dict[str, Any]:
        device_id = device.device_id
        fields = {"device_id": device_id, "epoch": epoch, "suite": suite, "segment": device.segment,
                  "hub_kex_public_key": hub_pub, "certificate_pem": cert_pem,
                  "transport_certificate_pem": transport_pem}
        sig = self.ca.sign(hub_response_message(transcript, fields))
        return {"device_id": device_id, "epoch": epoch, "suite": suite, "segment": device.segment,
                "hub_kex_public_key": b64e(hub_pub),
                "certificate_pem": cert_pem, "transport_certificate_pem": transport_pem,
                "ca_certificate_pem": self.ca.certificate_pem.decode(),
                "signature": b64e(sig)}

    # -- ingest lookups --------------------------------------------------

    def prefetch(self, device_ids: Iterable[str]) -> None:
        """Refresh, in one query, the cached records of those devices whose entry is missing or expired.

        Ingest calls it once per batch, so a hub does not re-read each device on
        its own round trip as the cache entries expire (``device_cache_ttl_s``).
        """
        mono = self.clock.monotonic()
        ttl = self.cfg.device_cache_ttl_s
        with self._lock:
            stale = [d for d in set(device_ids)
                     if (e := self._cache.get(d)) is None or mono - e.loaded_at > ttl]
        if len(stale) < 2:
            return  # session() reads a single one itself
        fresh = self.store.get_devices(sorted(stale))
        with self._lock:
            self._last_prefetch = mono
            for device_id, record in fresh.items():
                old = self._cache.get(device_id)
                self._cache[device_id] = _CachedDevice(record, mono, old.keys if old else {})
            # Devices seen for the first time: their key epochs in the same kind of single round trip
            # (one query each made the hub's first pass over a 10,000-device fleet take minutes).
            keyless = [d for d in fresh if not self._cache[d].keys]
        if len(keyless) > 1:
            for ek in self.store.epoch_keys(keyless):
                keys = self._cache[ek.device_id].keys
                if ek.epoch not in keys:
                    keys[ek.epoch] = (ek.suite, self._unwrap(ek.device_id, ek.epoch, ek.suite, ek.wrapped_key))

    def session(self, device_id: str, epoch: int) -> tuple[DeviceRecord, str, SessionKeys]:
        """Device record and unwrapped keys for (device, epoch), cached briefly.

        Raises:
            UnknownDeviceError: device or epoch unknown.
            RevokedError: device not active.
        """
        mono = self.clock.monotonic()
        with self._lock:
            entry = self._cache.get(device_id)
        # An entry the current batch's prefetch read is used for the whole batch even if the batch
        # outlasts the TTL on a loaded machine (re-reading each device singly then would make the
        # batch slower still): a revocation is seen within the TTL plus one batch.
        if entry is None or (mono - entry.loaded_at > self.cfg.device_cache_ttl_s
                             and entry.loaded_at != self._last_prefetch):
            record = self.store.get_device(device_id)
            entry = _CachedDevice(record, mono, entry.keys if entry else {})
            with self._lock:
                self._cache[device_id] = entry
        if entry.record.status != "active":
            raise RevokedError(f"device {device_id!r} is {entry.record.status}")
        got = entry.keys.get(epoch)
        if got is None:
            ek = self.store.epoch_key(device_id, epoch)
            if ek is None:
                raise UnknownDeviceError(f"device {device_id!r} has no key epoch {epoch}")
            got = (ek.suite, self._unwrap(device_id, epoch, ek.suite, ek.wrapped_key))
            entry.keys[epoch] = got
        return entry.record, got[0], got[1]
