"""One hub's components, built and wired from configuration.

Both the hub process (:mod:`iotguard.hub.service`) and the tests build the
hub through :func:`build_hub_core`, so what is tested is what runs: the
store, key store, audit log, Cedar policy engine with the device posture,
registry, ingest and the REST API, connected to each other.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import case, func, select

from iotguard.audit import AuditEvent, TransparencyLog
from iotguard.audit.anchor import CheckpointSchedule
from iotguard.channel import command_topic, encode_command
from iotguard.clock import Clock, SystemClock
from iotguard.config import HubConfig
from iotguard.errors import IotGuardError, PolicyDenied
from iotguard.hub.api import create_app
from iotguard.hub.audit_store import open_audit_log
from iotguard.hub.ingest import IngestProcessor
from iotguard.hub.policy_store import SqlPolicyRepository, device_posture, load_posture
from iotguard.hub.privacy_store import PrivacyStore, enforce_retention
from iotguard.hub.registry import FleetRegistry, open_hub_keys
from iotguard.hub.schema import devices
from iotguard.hub.store import DeviceRecord, HubStore
from iotguard.keys import KeyStore
from iotguard.policy import AccessRequest, PolicyAdministration, PolicyEngine, PostureStore
from iotguard.policy.acl import render_mosquitto_acl
from iotguard.policy.policyset import default_policy_set
from iotguard.policy.posture import Posture
from iotguard.privacy import load_contract
from iotguard.privacy.contract import DataContract, check_reading
from iotguard.wire import Reading

__all__ = ["AUDIT_ORIGIN", "HubCore", "build_hub_core"]

log = logging.getLogger(__name__)

AUDIT_ORIGIN = "iotguard.local/audit"
#: The hub's own MQTT identity (its client certificate CN) and what it may do on the broker.
HUB_MQTT_IDENTITY = "iotguard-hub"
HUB_MQTT_GRANTS = [("read", "iotguard/+/+/telemetry"), ("write", "iotguard/+/+/ack"), ("write", "iotguard/+/+/cmd")]

# Policy-administration event names -> audit event types.
_POLICY_EVENTS = {
    "policy.activated": "policy.changed",
    "policy.proposed": "policy.proposed",
    "policy.quarantine": "device.quarantined",
    "policy.release": "device.released",
}


@functools.lru_cache(maxsize=256)
def _contract(model: str) -> DataContract:
    # Shipped contracts are package data and never change while the hub runs;
    # parsing TOML per reading would dominate ingest.
    return load_contract(model)


class PolicyAuditAdapter:
    """Lets the policy administration write through the audit log's one interface."""

    def __init__(self, audit: TransparencyLog, clock: Clock) -> None:
        self.audit = audit
        self.clock = clock

    def record(self, event_type: str, details: Mapping[str, Any]) -> None:
        kind = _POLICY_EVENTS.get(event_type, event_type)
        subject = str(details.get("device_id") or "policy")
        actor = str(details.get("actor") or "hub.policy")
        clean = {k: v for k, v in details.items() if isinstance(v, str | int | float | bool | bytes | list | dict)}
        self.audit.record(AuditEvent(kind, self.clock.now(), actor, subject, clean))


@dataclass
class HubCore:
    """Everything one hub process holds, wired together."""

    cfg: HubConfig
    clock: Clock
    store: HubStore
    keystore: KeyStore
    audit: TransparencyLog
    posture: PostureStore
    policy: PolicyEngine
    policy_admin: PolicyAdministration
    registry: FleetRegistry
    processor: IngestProcessor
    app: FastAPI
    checkpoints: CheckpointSchedule
    privacy: PrivacyStore
    #: Publishes (topic, payload) to the broker; set once the hub's MQTT client is up.
    publisher: Callable[[str, bytes], None] | None = None

    def sync_posture(self, device_id: str) -> None:
        """Bring one device's posture in line with the registry (after enroll, revoke, re-key)."""
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

    def record_initial_consent(self, subject_id: str, device_id: str, decisions: Mapping[str, bool]) -> None:
        """Link a device to its data subject and record the subject's decisions (no push: the device has them)."""
        now = self.clock.now()
        self.privacy.link_device(subject_id, device_id, now)
        for purpose, granted in decisions.items():
            self.privacy.set_consent(subject_id, purpose, granted, now, actor="owner")

    def push_consent(self, subject_id: str) -> int:
        """Send the subject's current consent to each of their devices (authenticated command); returns how many."""
        if self.publisher is None:
            log.warning("consent for %s recorded; no broker connection to push it yet", subject_id)
            return 0
        sent = 0
        for config in self.privacy.consent_configs(subject_id, self.clock.now()):
            try:
                record = self.store.get_device(config.device_id)
                if record.current_epoch is None:
                    continue
                _r, _s, keys = self.registry.session(record.device_id, record.current_epoch)
            except IotGuardError as exc:
                log.warning("consent not pushed to %s: %s", config.device_id, exc.code)
                continue
            self.publisher(command_topic(record.segment, record.device_id),
                           encode_command(record.device_id, "consent-config", config.encode(), keys.downlink))
            sent += 1
        return sent

    def update_broker_access(self, device_id: str, *, force: bool = False) -> None:
        """Rewrite the broker's CRL and ACL and make Mosquitto reload them (revocation at the broker)."""
        from iotguard.hub.mosquitto import reload, update_access_files

        try:
            d = self.store.get_device(device_id)
        except IotGuardError:
            return
        if not force and d.status == "active" and d.enrolled_at and \
                d.enrolled_at < self.clock.now() - timedelta(seconds=5):
            return  # nothing about broker access changed (e.g. a re-key)
        update_access_files(self.cfg.mosquitto_dir, self.registry.ca, self.store, self.clock.now(),
                            acl_renderer=self.broker_acl)
        if self.cfg.mosquitto_pid_file:
            reload(self.cfg.mosquitto_pid_file)

    def broker_acl(self) -> str:
        """The Mosquitto ACL derived from the active Cedar policies and posture (micro-segmentation)."""
        return render_mosquitto_acl(self.policy, service_accounts={HUB_MQTT_IDENTITY: HUB_MQTT_GRANTS})

    def posture_changed(self, device_id: str) -> None:
        """After a quarantine or release: the broker's ACL follows the policy at once."""
        if self.cfg.mosquitto_dir:
            self.update_broker_access(device_id, force=True)

    def enforce_retention(self) -> None:
        """Delete readings past their purpose's retention (logged), on the maintenance schedule."""
        report = enforce_retention(self.store.engine, self.clock.now(), contracts=_contract, audit=self.audit)
        if report.total:
            log.info("retention deleted %d readings", report.total)

    def repush_unacknowledged_consent(self) -> None:
        """Push again consent configurations a device has not acknowledged (offline at the time)."""
        if self.publisher is None:
            return
        subjects = {s for s in (self.privacy.subject_of(d) for d, _v in self.privacy.unacknowledged_consent()) if s}
        for subject in sorted(subjects):
            self.push_consent(subject)

    def authorize_reading(self, record: DeviceRecord, topic: str, reading: Reading) -> None:
        """Ingest's decision for one authentic reading: Cedar publish policy, then the data contract.

        Raises:
            PolicyDenied: the policy or the device model's data contract refuses it.
        """
        self.policy.authorize(AccessRequest.device(record.device_id, "publish", topic))
        try:
            contract = _contract(record.model)
        except IotGuardError:
            raise PolicyDenied(f"no data contract for model {record.model!r}") from None
        check_reading(contract, reading.purpose, reading.fields)

    def posture_fingerprint(self) -> tuple[Any, ...]:
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
        active = self.policy_admin.repository.active_version()
        if active is not None and active.version != self.policy.policy_version:
            self.policy_admin.load_active(self.policy)

    def refresh_posture(self) -> None:
        """Bring the in-memory posture in line with the database (changes made by other processes)."""
        fresh = load_posture(self.store.engine)
        known = {p.device_id for p in self.posture}
        for p in fresh:
            if self.posture.get(p.device_id) != p:  # a change bumps the posture version: caches drop it
                self.posture.put(p)
        for gone in known - {p.device_id for p in fresh}:
            self.posture.remove(gone)


def build_hub_core(cfg: HubConfig, *, clock: Clock | None = None, database_url: str | None = None) -> HubCore:
    """Open the database and key store and wire a hub's components."""
    clock = clock or SystemClock()
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    store = HubStore.open(database_url or cfg.resolved_database_url())
    keystore = open_hub_keys(cfg)
    audit = open_audit_log(store.engine, keystore, AUDIT_ORIGIN)
    posture = load_posture(store.engine)
    policy = PolicyEngine(None, posture=posture)
    admin = PolicyAdministration(SqlPolicyRepository(store.engine), audit=PolicyAuditAdapter(audit, clock))
    if admin.load_active(policy) == 0:
        if admin.repository.versions():
            log.error("the active policy does not load: every request is denied until a valid one is activated")
        else:
            admin.propose_and_activate(default_policy_set(), author="iotguard-hub",
                                       comment="shipped default policies", engine=policy)
    from iotguard.hub.custody_gate import custody_gate_from_config

    registry = FleetRegistry(store, keystore, cfg, clock, audit=audit, custody=custody_gate_from_config(cfg, audit))
    processor = IngestProcessor(store, registry, cfg, clock=clock, audit=audit)
    privacy = PrivacyStore(store.engine, audit=audit, keystore=keystore)
    consent_pushers: list[Callable[[str], int]] = []

    def consent_changed(subject: str) -> None:
        for push in consent_pushers:
            push(subject)

    posture_listeners: list[Callable[[str], None]] = []

    def posture_changed(device_id: str) -> None:
        for listener in posture_listeners:
            listener(device_id)

    app = create_app(store, registry, processor.stats, policy=policy, posture=posture, policy_admin=admin,
                     audit=audit, clock=clock, privacy=privacy, api_docs=cfg.api_docs,
                     on_consent_change=consent_changed,
                     on_posture_change=posture_changed)
    anchors_dir = Path(cfg.data_dir) / "anchors"
    anchors_dir.mkdir(exist_ok=True)
    from iotguard.hub.audit_store import FileAnchor
    from iotguard.hub.chain_anchor import chain_anchor_from_config

    chain = chain_anchor_from_config(cfg)
    schedule = CheckpointSchedule(audit, timedelta(seconds=cfg.checkpoint_interval_s),
                                  [FileAnchor(anchors_dir / "checkpoints.log"), *([chain] if chain else [])])
    core = HubCore(cfg, clock, store, keystore, audit, posture, policy, admin, registry, processor, app, schedule,
                   privacy)
    consent_pushers.append(core.push_consent)
    posture_listeners.append(core.posture_changed)
    registry.listeners.append(core.sync_posture)
    if cfg.mosquitto_dir:
        registry.listeners.append(core.update_broker_access)
    processor.authorizer = core.authorize_reading
    return core


class Maintenance:
    """Background duties of a hub process: cross-process refresh and checkpoints."""

    def __init__(self, core: HubCore, interval_s: float = 2.0) -> None:
        self.core = core
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iotguard-maintenance", daemon=True)
        self._fingerprint: tuple[Any, ...] | None = None
        self._last_hourly = -3600.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def tick(self) -> None:
        core = self.core
        core.reload_policy_if_changed()
        fp = core.posture_fingerprint()
        if fp != self._fingerprint:
            core.refresh_posture()
            self._fingerprint = fp
        core.checkpoints.tick(core.clock.now())
        now = time.monotonic()
        if now - self._last_hourly >= 3600:
            self._last_hourly = now
            core.enforce_retention()
        core.repush_unacknowledged_consent()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("hub maintenance failed; retrying")
