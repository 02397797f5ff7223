"""Posture: what the policy engine knows about each device, kept in step everywhere.

The in-memory :class:`~iotguard.policy.PostureStore` every decision reads is
derived from the registry (active devices, certificate expiry, segment) and
the stored ``device_posture`` rows (quarantine, trust tier). Changes made in
this process take effect at once; changes made by other processes (the CLI,
other hubs) are picked up by :meth:`PostureService.refresh_if_changed`, which
the maintenance tick runs. A posture change that alters broker access writes
a broker access row to the outbox in the same transaction.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection

from iotguard.audit import AuditEvent
from iotguard.clock import Clock
from iotguard.errors import IotGuardError, PolicyDenied
from iotguard.hub.outbox import OutboxMessage, OutboxStore, write_outbox
from iotguard.hub.policy_store import (
    SqlPolicyRepository,
    device_posture,
    load_device_posture,
    load_posture,
    save_posture,
    write_posture,
)
from iotguard.hub.schema import devices
from iotguard.hub.services.audit import audit_message
from iotguard.hub.services.broker_access import broker_access_message
from iotguard.hub.store import DeviceRecord, HubStore
from iotguard.hub.tls import HUB_MQTT_IDENTITY
from iotguard.policy import AccessRequest, PolicyAdministration, PolicyEngine, PostureStore
from iotguard.policy.acl import IncrementalAcl
from iotguard.policy.policyset import default_policy_set
from iotguard.policy.posture import Posture
from iotguard.privacy import load_contract
from iotguard.privacy.contract import DataContract, check_reading
from iotguard.privacy.media_contract import check_media
from iotguard.wire import MediaObject, Reading

__all__ = [
    "HUB_MQTT_GRANTS",
    "HUB_MQTT_IDENTITY",
    "OutboxPolicyAudit",
    "PostureService",
    "contract_for",
    "open_policy",
]

#: What the hub's own MQTT identity (:data:`~iotguard.hub.tls.HUB_MQTT_IDENTITY`) may do on the broker.
HUB_MQTT_GRANTS = [("read", "iotguard/+/+/telemetry"), ("read", "iotguard/+/+/media"),
                   ("write", "iotguard/+/+/ack"), ("write", "iotguard/+/+/cmd")]

log = logging.getLogger(__name__)

# Policy-administration event names -> audit event types.
_POLICY_EVENTS = {
    "policy.activated": "policy.changed",
    "policy.proposed": "policy.proposed",
    "policy.quarantine": "device.quarantined",
    "policy.release": "device.released",
}


@functools.lru_cache(maxsize=256)
def contract_for(model: str) -> DataContract:
    """The data contract of a device model, parsed once.

    Shipped contracts are package data and never change while the hub runs;
    parsing TOML per reading would dominate ingest.

    Raises:
        ConfigError: no contract for ``model``.
    """
    return load_contract(model)


class OutboxPolicyAudit:
    """Lets the policy administration write audit events through the outbox."""

    def __init__(self, outbox: OutboxStore, clock: Clock) -> None:
        self.outbox = outbox
        self.clock = clock

    def record(self, event_type: str, details: Mapping[str, Any]) -> None:
        kind = _POLICY_EVENTS.get(event_type, event_type)
        subject = str(details.get("device_id") or "policy")
        actor = str(details.get("actor") or "hub.policy")
        clean = {k: v for k, v in details.items() if isinstance(v, str | int | float | bool | bytes | list | dict)}
        now = self.clock.now()
        self.outbox.enqueue([audit_message(AuditEvent(kind, now, actor, subject, clean))], now)


def open_policy(store: HubStore, outbox: OutboxStore, clock: Clock) -> tuple[PolicyEngine, PolicyAdministration]:
    """The Cedar engine with the active stored policy and posture; the shipped defaults are activated at first start.

    A stored policy that no longer validates leaves the engine denying everything (fail closed).
    """
    posture = load_posture(store.engine)
    engine = PolicyEngine(None, posture=posture)
    admin = PolicyAdministration(SqlPolicyRepository(store.engine), audit=OutboxPolicyAudit(outbox, clock))
    if admin.load_active(engine) == 0:
        if admin.repository.versions():
            log.error("the active policy does not load: every request is denied until a valid one is activated")
        else:
            admin.propose_and_activate(default_policy_set(), author="iotguard-hub",
                                       comment="shipped default policies", engine=engine)
    return engine, admin


#: Shortest interval between two database re-reads of one device's posture after denials.
REREAD_INTERVAL_S = 0.5


class PostureService:
    """Quarantine, release, trust tier, and the posture every Cedar decision reads.

    Args:
        store: The device registry (read only).
        engine: The Cedar policy engine of this process.
        admin: Policy administration (versions, quarantine, release).
        posture: The in-memory posture the engine reads.
        clock: Time source.
        broker_managed: True when the hub manages a Mosquitto broker's ACL
            (``hub.mosquitto_dir``): posture changes then queue a rewrite.
    """

    def __init__(self, store: HubStore, engine: PolicyEngine, admin: PolicyAdministration, posture: PostureStore,
                 clock: Clock, *, broker_managed: bool) -> None:
        self.store = store
        self.engine = engine
        self.admin = admin
        self.posture = posture
        self.clock = clock
        self.broker_managed = broker_managed
        self._reread: dict[str, float] = {}
        self._acl = IncrementalAcl(engine, {HUB_MQTT_IDENTITY: HUB_MQTT_GRANTS})
        self._acl_lock = threading.Lock()
        # One lock for every change of this process's posture: a refresh from the database (the
        # maintenance thread) must not put back a row it read just before another thread's write
        # committed (an attestation's "failed" turned back into the stale "unverified").
        self._write_lock = threading.RLock()

    def _broker(self, device_id: str, reason: str) -> list[OutboxMessage]:
        return [broker_access_message(device_id, reason)] if self.broker_managed else []

    def sync(self, device_id: str) -> None:
        """Bring one device's posture in line with the registry (after enroll, revoke, re-key, renew)."""
        with self._write_lock:
            self._sync(device_id)

    def _sync(self, device_id: str) -> None:
        try:
            d = self.store.get_device(device_id)
        except IotGuardError:
            self.posture.remove(device_id)
            return
        if d.status != "active":
            if self.posture.get(device_id) is not None:
                self.posture.remove(device_id)
            return
        current = self.posture.get(device_id)
        if current is None:
            self.posture.put(Posture(device_id=d.device_id, segment=d.segment, model=d.model,
                                     cert_not_after=d.cert_not_after))
        elif current.cert_not_after != d.cert_not_after or current.segment != d.segment:
            self.posture.update(device_id, cert_not_after=d.cert_not_after, segment=d.segment)

    def quarantine(self, device_id: str, *, actor: str, reason: str) -> None:
        """Move a device into the quarantine segment: ingest, API and broker deny it at once.

        Raises:
            UnknownDeviceError: the device has no posture (not active).
        """
        with self._write_lock:
            self.admin.quarantine(self.posture, device_id, actor=actor, reason=reason)
            save_posture(self.store.engine, [self.posture.require(device_id)], now=self.clock.now(),
                         effects=self._broker(device_id, "quarantined"))

    def release(self, device_id: str, *, actor: str, reason: str) -> None:
        """Return a device from quarantine (the policy requires a fresh verified attestation).

        Raises:
            PolicyDenied: the policy refuses the release.
            UnknownDeviceError: the device has no posture.
        """
        with self._write_lock:
            self.admin.release(self.posture, device_id, actor=actor, reason=reason)
            save_posture(self.store.engine, [self.posture.require(device_id)], now=self.clock.now(),
                         effects=self._broker(device_id, "released"))

    def mark_tampered(self, device_id: str) -> None:
        """The device reported tampering: trust tier ``failed``, so every enforcement point refuses it."""
        with self._write_lock:
            if self.posture.get(device_id) is None:
                return
            self.posture.update(device_id, trust_tier="failed")
            save_posture(self.store.engine, [self.posture.require(device_id)], now=self.clock.now(),
                         effects=self._broker(device_id, "tampered"))

    def apply_attestation(self, device_id: str, trust_tier: str, *, attested: bool, audit: OutboxMessage,
                          within: Callable[[Connection], None] | None = None) -> None:
        """An appraisal's result: the trust tier (and, when affirming, the attestation time) every decision reads.

        Saved with ``audit`` (the appraisal's audit entry), when the tier
        changed the broker access rewrite, and whatever ``within`` writes
        (the appraisal's record, its nonce consumed), in one transaction: one
        commit. ``within`` raising rolls everything back and leaves the
        posture this process reads as it was.

        Posture first (ADR 0812): this process's posture changes before the
        transaction commits, so a reader who sees the appraisal's record sees
        the posture it implies, never an affirming record beside the old tier.
        A commit that fails puts back what this call changed.
        """
        with self._write_lock:
            self._apply_attestation(device_id, trust_tier, attested=attested, audit=audit, within=within)

    def _apply_attestation(self, device_id: str, trust_tier: str, *, attested: bool, audit: OutboxMessage,
                           within: Callable[[Connection], None] | None) -> None:
        now = self.clock.now()
        current = self.posture.get(device_id)
        if current is None:  # not active: no posture to set; the appraisal is still audited
            with self.store.engine.begin() as conn:
                if within is not None:
                    within(conn)
                write_outbox(conn, [audit], now)
            return
        changes: dict[str, Any] = {"trust_tier": trust_tier}
        if attested:
            changes["attested_at"] = now
        effects = [audit]
        if current.trust_tier != trust_tier:
            effects += self._broker(device_id, f"attestation_{trust_tier}")
        applied: Posture | None = None
        try:
            with self.store.engine.begin() as conn:
                if within is not None:
                    within(conn)
                write_posture(conn, [replace(current, **changes)], now=now, effects=effects)
                applied = self.posture.update(device_id, **changes)
        except BaseException:
            if applied is not None and self.posture.get(device_id) == applied:
                # The commit failed: the database still holds the old values of what this call changed.
                self.posture.update(device_id, **{k: getattr(current, k) for k in changes})
            raise

    def set_risk(self, scores: Mapping[str, int]) -> list[str]:
        """Set devices' risk scores (0-100, the Cedar context's ``risk_score``); returns the devices changed.

        Devices without posture are skipped; a change that alters broker access queues an ACL rewrite.
        """
        with self._write_lock:
            return self._set_risk(scores)

    def _set_risk(self, scores: Mapping[str, int]) -> list[str]:
        changed = []
        for device_id, score in sorted(scores.items()):
            current = self.posture.get(device_id)
            value = max(0, min(100, int(score)))
            if current is not None and current.risk_score != value:
                self.posture.update(device_id, risk_score=value)
                changed.append(device_id)
        if changed:
            save_posture(self.store.engine, [self.posture.require(d) for d in changed], now=self.clock.now(),
                         effects=[m for d in changed for m in self._broker(d, "risk")])
        return changed

    def authorize_reading(self, record: DeviceRecord, topic: str, reading: Reading) -> None:
        """Ingest's decision for one authentic reading: Cedar publish policy, then the data contract.

        Raises:
            PolicyDenied: the policy or the device model's data contract refuses it.
        """
        contract = self._publish_contract(record, topic)
        check_reading(contract, reading.purpose, reading.fields)

    def _publish_contract(self, record: DeviceRecord, topic: str) -> DataContract:
        """Cedar's publish decision for ``topic`` (re-read from the database before a denial stands),
        then the device model's data contract."""
        request = AccessRequest.device(record.device_id, "publish", topic)
        if not self.engine.decide(request).allowed:
            # Decided again on the posture in the database (it may have changed in another process).
            self.reread(record.device_id)
            self.engine.authorize(request)
        try:
            return contract_for(record.model)
        except IotGuardError:
            raise PolicyDenied(f"no data contract for model {record.model!r}") from None

    def authorize_media(self, record: DeviceRecord, topic: str, media: MediaObject) -> None:
        """Ingest's decision for one authentic media object: Cedar publish policy, then the data contract.

        The contract must declare the object's purpose and stream and release
        exactly this (anonymised with the declared method, or raw) for that
        purpose; inferences travel as readings, never as media.

        Raises:
            PolicyDenied: the policy or the device model's data contract refuses it.
        """
        contract = self._publish_contract(record, topic)
        purpose = contract.purpose(media.purpose)
        check_media(contract.media, purpose.media, media.purpose, media.stream, media.release, media.method)

    def broker_acl(self, changed: Iterable[str] | None = None) -> str:
        """The Mosquitto ACL derived from the active Cedar policies and posture (micro-segmentation).

        ``changed`` names the devices whose posture changed since the last
        call: only their grants are derived again (:class:`~iotguard.policy.acl.IncrementalAcl`).
        """
        with self._acl_lock:
            return self._acl.render(changed)

    # -- changes made by other processes ----------------------------------

    def fingerprint(self) -> tuple[Any, ...]:
        """Cheap summary of registry and stored posture, to notice changes made by other processes
        (enrollments, revocations, renewals, re-keys, quarantine, tamper reports)."""
        with self.store.engine.connect() as c:
            reg = c.execute(select(func.count(), func.sum(case((devices.c.status == "active", 1), else_=0)),
                                   func.max(devices.c.enrolled_at), func.max(devices.c.revoked_at),
                                   func.max(devices.c.cert_not_after), func.sum(devices.c.current_epoch))).one()
            stored = c.execute(select(func.count(), func.max(device_posture.c.updated_at))).one()
        return (*reg, *stored)

    def reload_policy_if_changed(self) -> None:
        """Load the active policy version if another process activated a different one."""
        active = self.admin.repository.active_version()
        if active is not None and active.version != self.engine.policy_version:
            self.admin.load_active(self.engine)

    def reread(self, device_id: str) -> bool:
        """Re-read one device's posture from the database after a denial; True if it had changed.

        Posture changes made by another hub process (an enrollment, a release,
        a new attestation) reach this process's memory on the next maintenance
        tick; until then a decision could deny on stale facts, and a denied
        reading is acknowledged and dropped by the device. So a denial is
        checked against the database first, at most every
        :data:`REREAD_INTERVAL_S` per device (a denied device cannot turn its
        flood into database load).
        """
        now = self.clock.monotonic()
        if now - self._reread.get(device_id, -REREAD_INTERVAL_S) < REREAD_INTERVAL_S:
            return False
        if len(self._reread) > 100_000:
            self._reread.clear()
        self._reread[device_id] = now
        with self._write_lock:  # read and put as one step: no other thread's write lands in between
            fresh = load_device_posture(self.store.engine, device_id)
            current = self.posture.get(device_id)
            if fresh == current:
                return False
            if fresh is None:
                self.posture.remove(device_id)
            else:
                self.posture.put(fresh)  # a change bumps the posture version: cached decisions drop
            return True

    def refresh(self) -> None:
        """Bring the in-memory posture in line with the database (changes made by other processes).

        Under the write lock: a row read here cannot be older than a change this process made
        meanwhile (that change waits, then lands on top)."""
        with self._write_lock:
            fresh = load_posture(self.store.engine)
            known = {p.device_id for p in self.posture}
            for p in fresh:
                if self.posture.get(p.device_id) != p:  # a change bumps the posture version: caches drop it
                    self.posture.put(p)
            for gone in known - {p.device_id for p in fresh}:
                self.posture.remove(gone)
