"""Build one hub's services from configuration.

Both the hub process (:mod:`iotguard.hub.service`), the CLI and the tests
build the hub through :func:`build_hub_services`, so what is tested is what
runs. The function only constructs: each service receives its stores, the
clock, the outbox and the services it uses in its constructor. Side effects
another process must see travel through the outbox; :meth:`HubServices.drainer`
delivers them with the handlers this process can run.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from iotguard.analytics.ledger import SubjectLedger
from iotguard.audit import AuditSink
from iotguard.audit.anchor import CheckpointSchedule
from iotguard.clock import Clock, SystemClock
from iotguard.config import HubConfig
from iotguard.detection import AutoencoderConfig, DetectorConfig, FeatureConfig, MonitorConfig, ScorerConfig
from iotguard.detection.geo import CountryDatabase
from iotguard.errors import IotGuardError
from iotguard.hub.audit_store import FileAnchor, open_audit_log
from iotguard.hub.credentials import set_end_of_support
from iotguard.hub.custody_gate import custody_gate_from_config
from iotguard.hub.device_plane import DevicePlane
from iotguard.hub.ingest import IngestProcessor
from iotguard.hub.outbox import DELIVERED_RETENTION, OutboxDrainer, OutboxHandler, SqlOutboxStore
from iotguard.hub.privacy_store import PrivacyStore
from iotguard.hub.services.aggregation import SecureAggregationService
from iotguard.hub.services.ak_certification import (
    AkCertificationService,
    ek_crls_from_config,
    ek_intermediates_from_config,
    ek_roots_from_config,
)
from iotguard.hub.services.analytics import AnalyticsService
from iotguard.hub.services.attestation import AttestationService, ChallengePush
from iotguard.hub.services.audit import AUDIT_ORIGIN, AuditService, OutboxAuditSink
from iotguard.hub.services.broker_access import BrokerAccess, EmbeddedBrokerLink
from iotguard.hub.services.consent import CommandChannel, ConsentPush, ConsentService
from iotguard.hub.services.data_access import K_ANONYMOUS_DATASET, DataAccessService
from iotguard.hub.services.detection import ActivePlaybook, DetectionService, WebhookNotifier
from iotguard.hub.services.detection_actions import FirmwareRollback
from iotguard.hub.services.firmware import FirmwareService
from iotguard.hub.services.learning import LearningService, affirming_posture
from iotguard.hub.services.lifecycle import DeviceLifecycle, open_hub_keys
from iotguard.hub.services.models import ModelService
from iotguard.hub.services.operators import OperatorService
from iotguard.hub.services.posture import PostureService, contract_for, open_policy
from iotguard.hub.services.repository_reads import RepositoryReads
from iotguard.hub.services.rollout_signals import HubCohortSignals
from iotguard.hub.services.rollouts import RolloutService
from iotguard.hub.services.sensing import DeviceHealthService, FlowIngestService, HubSignalsService
from iotguard.hub.services.telemetry import TelemetryService
from iotguard.hub.services.update_commands import UpdateCheckPush, queue_update_checks
from iotguard.hub.store import HubStore
from iotguard.hub.stores.aggregation_rounds import SqlRoundStore
from iotguard.hub.stores.alerts import SqlAlertStore
from iotguard.hub.stores.attestation import SqlAttestationStore
from iotguard.hub.stores.consent import SqlConsentStore
from iotguard.hub.stores.data_keys import SubjectKeyring
from iotguard.hub.stores.detector_state import SqlDetectorStateStore
from iotguard.hub.stores.firmware import SqlFirmwareFileStore
from iotguard.hub.stores.learning import SqlLearningRunStore
from iotguard.hub.stores.models import SqlModelStore
from iotguard.hub.stores.rollouts import SqlRolloutStore
from iotguard.hub.witnessing import finality_from_config
from iotguard.keys import KeyStore

__all__ = ["HubServices", "Maintenance", "build_analytics", "build_hub_services"]

log = logging.getLogger(__name__)


@dataclass
class HubServices:
    """The services of one hub process (a plain container: the logic lives in each service)."""

    cfg: HubConfig
    clock: Clock
    store: HubStore
    keystore: KeyStore
    outbox: SqlOutboxStore
    audit: AuditService
    posture: PostureService
    lifecycle: DeviceLifecycle
    consent: ConsentService
    operators: OperatorService
    telemetry: TelemetryService
    processor: IngestProcessor
    commands: CommandChannel
    broker: BrokerAccess | None
    plane: DevicePlane
    broker_link: EmbeddedBrokerLink
    attestation: AttestationService
    firmware: FirmwareService
    detection: DetectionService
    flows: FlowIngestService
    health: DeviceHealthService
    signals: HubSignalsService
    rollouts: RolloutService
    models: ModelService
    learning: LearningService
    data_access: DataAccessService
    analytics: AnalyticsService | None = None
    aggregation: SecureAggregationService | None = None
    repository_reads: RepositoryReads | None = None

    def drainer(self, worker: str = "hub") -> OutboxDrainer:
        """An outbox drainer with every handler this process has.

        Audit and broker access are delivered by any process (hub or CLI);
        consent pushes and attestation challenges only while :attr:`commands` is connected to the broker.
        """
        handlers: list[OutboxHandler] = [self.audit.delivery(), ConsentPush(self.consent),
                                         ChallengePush(self.lifecycle, self.commands)]
        handlers.append(UpdateCheckPush(self.lifecycle, self.commands))
        if self.broker is not None:
            handlers.append(self.broker)
        return OutboxDrainer(self.outbox, handlers, worker=worker, clock=self.clock)


def _monitor_config(cfg: HubConfig) -> MonitorConfig:
    """The flow monitor's settings: features and scoring compiled only when ``hub.detection_compiled``; the
    learning window of ``hub.detection_learn_flows`` and ``hub.detection_learn_s`` (ADR 0710)."""
    compiled = cfg.detection_compiled
    return MonitorConfig(detector=DetectorConfig(features=FeatureConfig(compiled=compiled),
                                                 scorer=ScorerConfig(autoencoder=AutoencoderConfig(compiled=compiled))),
                         learn_flows=cfg.detection_learn_flows, learn_s=cfg.detection_learn_s)


def build_hub_services(cfg: HubConfig, *, clock: Clock | None = None,
                       database_url: str | None = None) -> HubServices:
    """Open the database and key store and build a hub's services."""
    clock = clock or SystemClock()
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    keystore = open_hub_keys(cfg)
    keyring = SubjectKeyring(HubStore.open(database_url or cfg.resolved_database_url()).engine, keystore)
    store = HubStore(keyring.engine, cipher=keyring)  # reading bodies sealed per subject (ADR 0405)
    outbox = SqlOutboxStore(store.engine)
    audit_sink = OutboxAuditSink(outbox, clock)
    log_ = open_audit_log(store.engine, keystore, AUDIT_ORIGIN)
    anchors_dir = Path(cfg.data_dir) / "anchors"
    anchors_dir.mkdir(exist_ok=True)
    chain = None
    if cfg.chain_rpc_url:  # web3 (about a second of imports) only in a hub that anchors to a chain
        from iotguard.hub.chain_anchor import chain_anchor_from_config

        chain = chain_anchor_from_config(cfg)
    audit = AuditService(log_, CheckpointSchedule(log_, timedelta(seconds=cfg.checkpoint_interval_s),
                                                  [FileAnchor(anchors_dir / "checkpoints.log"),
                                                   *([chain] if chain else [])],
                                                  finalize=finality_from_config(cfg, log_, clock)))
    engine, admin = open_policy(store, outbox, clock)
    engine.set_dataset(K_ANONYMOUS_DATASET, anonymised=True)  # what `iotguard export` releases (ADR 0405)
    posture = PostureService(store, engine, admin, engine.posture, clock, broker_managed=bool(cfg.mosquitto_dir))
    broker_link = EmbeddedBrokerLink()
    lifecycle = DeviceLifecycle(store, keystore, cfg, clock, outbox=outbox, posture=posture, broker_link=broker_link,
                                custody=custody_gate_from_config(cfg, log_))
    commands = CommandChannel()
    consent = ConsentService(PrivacyStore(store.engine, audit=audit_sink, keystore=keystore, telemetry=store,
                                          keyring=keyring), store, lifecycle, commands, clock)
    playbook = ActivePlaybook(Path(cfg.data_dir))
    detection = DetectionService(SqlAlertStore(store.engine), posture, lifecycle.revoke, playbook, clock,
                                 notifier=WebhookNotifier(playbook))
    signals = HubSignalsService(detection, states=SqlDetectorStateStore(store.engine))
    attestation_store = SqlAttestationStore(store.engine)
    certification = AkCertificationService(attestation_store, store, outbox, clock, ek_roots=ek_roots_from_config(cfg),
                                           unsafe_accept_unendorsed_ek=cfg.unsafe_accept_unendorsed_ek,
                                           ek_crls=ek_crls_from_config(cfg),
                                           ek_intermediates=ek_intermediates_from_config(cfg))
    attestation = AttestationService(attestation_store, store, posture, outbox, clock,
                                     on_appraisal=signals.appraised, certification=certification)
    plane = DevicePlane(store, store.engine, engine, audit_sink, clock, reread_posture=posture.reread,
                        on_refusal=signals.refused, step_up=attestation.step_up)
    operators = OperatorService(store, engine, audit_sink, clock, plane)
    processor = IngestProcessor(store, lifecycle, cfg, clock=clock, audit=log_,
                                authorizer=posture.authorize_reading, media_authorizer=posture.authorize_media,
                                on_rejected=signals.rejected)
    broker = None
    if cfg.mosquitto_dir:
        broker = BrokerAccess(cfg.mosquitto_dir, cfg.mosquitto_pid_file, lifecycle.ca, store, posture.broker_acl,
                              clock)
    firmware = FirmwareService(SqlFirmwareFileStore(store.engine), keystore, audit_sink, clock,
                               reference_values=attestation,
                               support_dates=lambda model, when: set_end_of_support(store, model, when))
    rollouts = RolloutService(SqlRolloutStore(store.engine), store, firmware,
                              HubCohortSignals(store.engine, attestation.store), audit_sink, clock,
                              challenge=attestation.step_up,
                              announce=lambda ids: queue_update_checks(outbox, ids, clock.now()))
    detection.reattest = attestation.queue_challenge  # the playbook's response steps (issue 13)
    detection.rollback = FirmwareRollback(rollouts, store)
    models = ModelService(SqlModelStore(store.engine), keystore, audit_sink, clock, endorse=lifecycle.ca.sign)
    services = HubServices(cfg, clock, store, keystore, outbox, audit, posture, lifecycle, consent, operators,
                           TelemetryService(store, processor.stats), processor, commands, broker, plane, broker_link,
                           attestation, firmware, detection,
                           FlowIngestService(detection, Path(cfg.data_dir),
                                             lambda: {p.device_id: p.model for p in posture.posture},
                                             config=_monitor_config(cfg),
                                             states=SqlDetectorStateStore(store.engine),
                                             countries=CountryDatabase(cfg.detection_country_database)
                                             if cfg.detection_country_database else None),
                           DeviceHealthService(detection, states=SqlDetectorStateStore(store.engine)),
                           signals, rollouts, models,
                           LearningService(SqlLearningRunStore(store.engine), models, audit_sink, clock,
                                           eligible=affirming_posture(engine.posture)),
                           DataAccessService(store, consent.privacy, store, engine, audit_sink, clock, contract_for))
    services.analytics = build_analytics(cfg, store, audit_sink, clock)
    services.aggregation = SecureAggregationService(audit_sink, clock, SqlRoundStore(store.engine), keystore)
    services.learning.attach_privacy(services.aggregation, services.analytics.ledger,
                                     services.analytics.subjects.subject_of)
    services.consent.erasure_hooks.append(lambda devices, actor: services.learning.unlearn(devices, actor=actor))
    services.repository_reads = RepositoryReads(firmware, store, plane, engine.posture, clock)
    lifecycle.add_listener(services.repository_reads.forget_device)  # a renewal supersedes a certificate
    return services


def build_analytics(cfg: HubConfig, store: HubStore, audit: AuditSink, clock: Clock) -> AnalyticsService:
    """The central-DP service over the hub's readings and its per-subject ledger (also used by the CLI)."""
    from iotguard.hub.stores.subject_ledger import SqlSubjectLedgerStore

    ledger = SubjectLedger(SqlSubjectLedgerStore(store.engine), cfg.analytics_budget_epsilon,
                           timedelta(seconds=cfg.analytics_budget_period_s))
    return AnalyticsService(store, SqlConsentStore(store.engine), ledger, audit, clock)


class Maintenance:
    """Background duties of a hub process: outbox delivery, cross-process refresh, checkpoints."""

    def __init__(self, services: HubServices, interval_s: float = 2.0, *, worker: str = "hub") -> None:
        self.services = services
        self.drainer = services.drainer(worker)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iotguard-maintenance", daemon=True)
        self._fingerprint: tuple[Any, ...] | None = None
        self._last_hourly = -3600.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def wake(self) -> None:
        """Deliver the outbox now instead of at the next tick (a containment decided outside a request)."""
        self._wake.set()

    def tick(self) -> None:
        s = self.services
        s.posture.reload_policy_if_changed()
        fp = s.posture.fingerprint()
        if fp != self._fingerprint:
            s.posture.refresh()
            self._fingerprint = fp
        s.detection.refresh_risk()  # alerts' risk decays as devices behave
        s.audit.checkpoints.tick(s.clock.now())
        now = time.monotonic()
        if now - self._last_hourly >= 3600:
            self._last_hourly = now
            s.consent.enforce_retention()
            s.firmware.refresh_timestamp()
            s.outbox.purge_delivered(s.clock.now() - DELIVERED_RETENTION)
        s.consent.repush_unacknowledged()
        s.rollouts.tick()  # health gates of running rollouts: advance, pause or abort them
        try:
            s.consent.seal_clear_readings()  # migration 0311's data half, one chunk a tick until none is left
        except IotGuardError as exc:  # never at the cost of the rest of the tick (outbox delivery)
            log.warning("sealing readings stored clear failed: %s", exc.code)
        self.drainer.drain()  # last: what this tick queued (retention's audit event) goes out with the rest

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            woken = self._wake.wait(max(0.0, next_tick - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if woken and time.monotonic() < next_tick:
                    self.drainer.drain()  # woken: only the outbox, the rest keeps its rhythm
                    continue
                self.tick()
            except Exception:
                log.exception("hub maintenance failed; retrying")
            next_tick = time.monotonic() + self.interval_s
