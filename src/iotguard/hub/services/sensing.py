"""The hub's detection inputs: sensors' flow reports and devices' health reports, their alerts into the response.

A sensor is a device enrolled with the model :data:`SENSOR_MODEL`; it sends
``report_flows`` signed requests through the device plane (Cedar lets only
sensors do so). :meth:`FlowIngestService.report` decodes the report
strictly, runs it through a :class:`~iotguard.detection.FlowMonitor`
(learn from the first flows, then score) holding exactly the stored state
of the hosts the batch names, writes that state back to the detector-state
store shared by every hub process (ADR 0752), and hands the alerts to
:meth:`~iotguard.hub.services.detection.DetectionService.raise_alerts`
(stored, audited, the playbook's response carried out).

Flows to or from an address in the operator's threat feed,
``<data_dir>/threat_feed`` (:mod:`iotguard.hub.services.threat_feed`; read
again when it changes, without restarting the learning), raise
``known_bad_address`` alerts.

The device behind a flow's originator address is named by the operator's
address inventory, ``<data_dir>/device_addresses`` (``<address>
<device_id>`` lines; re-read when it changes, which restarts the monitor's
learning; the learned baselines are stored per inventory). Flows from
addresses that are not in it are still detected on, named by address; the
planner suppresses actions on them (``not_a_device``).

:class:`DeviceHealthService` takes each device's own signed
``report_health`` requests into a per-device
:class:`~iotguard.detection.HealthDetector` (process set, listening ports,
destinations, resource and message rates against the device's baseline);
each device's baseline lives in the hub's detector-state store, so every
hub process and a restarted one continue it (ADR 0751).

:class:`HubSignalsService` turns what the hub itself sees into alerts: the
device plane's refusals and ingest's rejections of readings feed a :class:`~iotguard.detection.RefusalRule`
(an authenticated device the policy keeps denying), and attestation
appraisals an :class:`~iotguard.detection.AppraisalRule` (evidence
appraised contraindicated or warning).

The hub-signal rules' per-device counters and throttles live in the same
store (ADR 0752).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2

from iotguard.clock import Clock
from iotguard.detection import (
    Alert,
    AppraisalRule,
    FlowMonitor,
    FlowReportLimits,
    HealthConfig,
    HealthDetector,
    HealthReport,
    MonitorConfig,
    Refusal,
    RefusalRule,
    decode_flow_report,
    decode_health_report,
)
from iotguard.detection.flow_state import HostStates
from iotguard.detection.geo import CountryDatabase
from iotguard.detection.model_state import INDEX_PART, export_scorer, import_scorer, model_parts, model_ports
from iotguard.detection.monitor import MAX_INVENTORY_BYTES, parse_address_inventory
from iotguard.errors import ConfigError, IotGuardError, MalformedError, StorageError
from iotguard.hub.services.detection import DetectionService
from iotguard.hub.services.detection_state import STATE_ATTEMPTS, apply_shared
from iotguard.hub.services.threat_feed import THREAT_FEED_FILE, FeedFile
from iotguard.hub.stores.detector_state import (
    DetectorStateStore,
    MemoryDetectorStateStore,
    StateConflict,
    StateWrite,
    VersionedState,
)
from iotguard.identity import VerifiedRequest

__all__ = [
    "ADDRESS_INVENTORY_FILE",
    "APPRAISALS_STATE_KIND",
    "FLOW_MODEL_KIND",
    "FLOW_STATE_KIND",
    "HEALTH_STATE_KIND",
    "REFUSALS_STATE_KIND",
    "SENSOR_MODEL",
    "STATE_ATTEMPTS",
    "DeviceHealthService",
    "FlowIngestService",
    "HubSignalsService",
]

log = logging.getLogger(__name__)

#: Device model of a sensor (the default policy lets only devices of this model report flows).
SENSOR_MODEL = "iotguard-sensor"
#: The address inventory's file name in the hub's data directory.
ADDRESS_INVENTORY_FILE = "device_addresses"
#: Detector-state kind of the per-device health baselines.
HEALTH_STATE_KIND = "health"
#: Detector-state kind of the flow monitor's per-host state (row key: the host's address).
FLOW_STATE_KIND = "flow"
#: Detector-state kind of the learned flow baselines (row key: ``<generation>/<part digest>``).
FLOW_MODEL_KIND = "flow_model"
#: Detector-state kinds of the hub-signal rules' per-device state.
REFUSALS_STATE_KIND = "refusals"
APPRAISALS_STATE_KIND = "appraisals"
#: Risk at which the default policy already refuses a device's requests without fresh attestation.
STEP_UP_RISK = 70
#: A host's flow state not written for this long is deleted (the shared form of the in-process monitor
#: forgetting its least recently seen hosts): one row per address ever seen would grow without bound.
FLOW_STATE_TTL = timedelta(days=7)
#: Batches a hub process handles between two prunes of stale host rows.
PRUNE_EVERY = 256


class FlowIngestService:
    """Sensors' flows in, alerts out; the flow monitor's state shared by every hub process (ADR 0752).

    Each batch loads the stored state of every host it names (detector-state
    kind :data:`FLOW_STATE_KIND`: damped feature sums, channels and ports,
    new-port and beaconing baselines, alert throttles, learning exclusion),
    runs through this process's :class:`~iotguard.detection.FlowMonitor`
    with exactly that state, and writes every host back with compare-and-set
    in one transaction; a batch that lost to another process's write is
    applied again (its learning-window rows too). The learned baselines,
    once fitted by any process, are stored (kind :data:`FLOW_MODEL_KIND`,
    keyed by a digest of the address inventory, device models and settings)
    and adopted by every process still learning and by a restarted one.

    Args:
        detection: Stores alerts and carries out the response.
        data_dir: The hub's data directory (the address inventory).
        models: Device id -> device model (per-model baselines).
        config: The monitor's settings.
        limits: Flow report bounds.
        states: Where the monitor's state lives (None: in this process only).
        clock: Time of the state writes (None: the detection service's clock).
        state_ttl: A host row not written for this long is deleted (every :data:`PRUNE_EVERY` batches); the host
            then starts afresh, as one the in-process monitor had forgotten.
        countries: A country database for the ``new_country`` rule (``hub.detection_country_database``).
    """

    def __init__(self, detection: DetectionService, data_dir: Path, models: Callable[[], Mapping[str, str]], *,
                 config: MonitorConfig | None = None, limits: FlowReportLimits | None = None,
                 states: DetectorStateStore | None = None, clock: Clock | None = None,
                 state_ttl: timedelta = FLOW_STATE_TTL, countries: CountryDatabase | None = None) -> None:
        self.detection = detection
        self.countries = countries
        self.inventory_path = data_dir / ADDRESS_INVENTORY_FILE
        #: Known-bad addresses, ``<data_dir>/threat_feed`` (ADR 0716): read again when it changes.
        self.feed = FeedFile(data_dir / THREAT_FEED_FILE)
        self._models = models
        self.config = config or MonitorConfig()
        self.limits = limits or FlowReportLimits()
        self.states: DetectorStateStore = states if states is not None else MemoryDetectorStateStore()
        self.clock = clock or detection.clock
        self._lock = threading.Lock()
        self._monitor: FlowMonitor | None = None
        self._generation = ""
        self._model_shared = False
        self._inventory_key: tuple[int, int] | None = None
        self._inventory: dict[str, str] = {}
        #: Flows accepted, and reports refused by reason code.
        self.flows_accepted = 0
        self.refused: Counter[str] = Counter()
        #: Batches whose write lost to another process's and were applied again.
        self.conflicts = 0
        self.state_ttl = state_ttl
        self._batches = 0
        #: Stale host rows this process deleted.
        self.pruned = 0

    def inventory(self) -> dict[str, str]:
        """The address inventory (address -> device id) as last loaded."""
        with self._lock:
            self._current()
            return dict(self._inventory)

    def _load_inventory(self) -> tuple[int, int] | None:
        try:
            st = self.inventory_path.stat()
        except FileNotFoundError:
            if self._inventory_key is not None:
                self._inventory = {}
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key != self._inventory_key:
            try:
                self._inventory = parse_address_inventory(self.inventory_path.read_bytes()[:MAX_INVENTORY_BYTES + 1])
            except ConfigError as exc:  # keep the last good inventory: a typo must not blind the detector
                log.error("address inventory %s not loaded (%s); keeping the previous one", self.inventory_path,
                          exc)
        return key

    def _current(self) -> FlowMonitor:
        key = self._load_inventory()
        if self._monitor is None or key != self._inventory_key:
            if self._monitor is not None:
                log.info("address inventory changed: the flow monitor learns again")
            self._inventory_key = key
            models = dict(self._models())
            self._monitor = FlowMonitor(self.config, devices=self._inventory, models=models,
                                        countries=self.countries)
            # Processes with the same inventory, models and settings share one learned baseline.
            basis = cbor2.dumps([sorted(self._inventory.items()), sorted(models.items()), repr(self.config)],
                                canonical=True)
            self._generation = hashlib.sha256(basis).hexdigest()[:16]
            self._model_shared = False
        feed = self.feed.current()
        if self._monitor.detector.feed is not feed:  # a new or changed feed; the learning goes on
            self._monitor.set_feed(feed)
        return self._monitor

    def _model_key(self, part: str) -> str:
        return f"{self._generation}/{hashlib.sha256(part.encode()).hexdigest()[:40]}"

    def _adopt_model(self, monitor: FlowMonitor) -> None:
        """Score with the learned baselines another process stored, if there are any."""
        index = self.states.load(FLOW_MODEL_KIND, self._model_key(INDEX_PART))
        if index is None:
            return
        try:
            names = model_parts(index.body)
            rows = self.states.load_many(FLOW_MODEL_KIND, [self._model_key(n) for n in names])
            parts = {n: rows[self._model_key(n)].body for n in names if self._model_key(n) in rows}
            monitor.detector.adopt(import_scorer(self.config.detector.scorer, {INDEX_PART: index.body, **parts}),
                                   model_ports(index.body))
        except MalformedError as exc:  # learn our own rather than score with a baseline that does not parse
            log.error("stored flow baseline unreadable (%s): this process learns its own", exc.code)
        self._model_shared = True

    def _share_model(self, monitor: FlowMonitor) -> None:
        """Store the baselines this process fitted; if another process stored its own first, use that one."""
        parts = export_scorer(monitor.detector.scorer, monitor.detector.model_ports)
        writes = [StateWrite(self._model_key(n), b, None) for n, b in parts.items()]
        try:
            self.states.save_many(FLOW_MODEL_KIND, writes, self.clock.now())
        except StateConflict:
            self._adopt_model(monitor)
        except StorageError as exc:  # too large to share: this process keeps scoring with its own
            log.error("flow baseline not shared (%s)", exc.code)
        self._model_shared = True

    def report(self, req: VerifiedRequest) -> dict[str, Any]:
        """One sensor's flow report (a verified, authorized ``report_flows`` request).

        Raises:
            MalformedError: the report does not decode (the ``flow_report_*``
                reason is logged and counted in :attr:`refused`).
            StorageError: ``detector_state_conflict`` after :data:`STATE_ATTEMPTS` lost writes in a row.
        """
        try:
            batch = decode_flow_report(req.body["flows"], self.limits)
        except MalformedError as exc:
            self.refused[exc.code] += 1
            log.warning("flow report from %s refused: %s", req.device_id, exc.code)
            raise MalformedError(f"flow report refused ({exc.code})") from None
        with self._lock:  # the monitor is this process's scratch space, one batch at a time
            monitor = self._current()
            if monitor.learning and not self._model_shared:
                self._adopt_model(monitor)
            window, seen = monitor.detector.window(), monitor.flows_seen

            def apply(stored: Mapping[str, VersionedState]) -> tuple[dict[str, bytes], list[Alert]]:
                monitor.detector.restore_window(window)
                monitor.flows_seen = seen
                monitor.detector.reset_hosts()
                hosts = HostStates(monitor.detector, batch, {h: row.body for h, row in stored.items()})
                for host, code in hosts.unreadable.items():
                    log.error("flow state of %s unreadable (%s): starting it afresh", host, code)
                alerts = monitor.observe(batch)
                return hosts.export(), alerts

            names = set(batch.orig_h.tolist()) | set(batch.resp_h.tolist())
            alerts = apply_shared(self.states, FLOW_STATE_KIND, names, self.clock, apply,
                                  on_conflict=self._conflicted)
            if not monitor.learning and not self._model_shared:
                self._share_model(monitor)
            self.flows_accepted += len(batch)
            learning = monitor.learning
            self._batches += 1
            if self._batches % PRUNE_EVERY == 0:
                self.pruned += self.states.prune(FLOW_STATE_KIND, self.clock.now() - self.state_ttl)
        actions = self.detection.raise_alerts(alerts) if alerts else []
        return {"accepted": len(batch), "alerts": len(alerts), "actions": len(actions), "learning": learning}

    def _conflicted(self) -> None:
        self.conflicts += 1


class DeviceHealthService:
    """Devices' own health reports in, alerts out, each device's baseline in the shared detector-state store.

    Every report loads the device's state (:class:`DetectorStateStore`, kind
    :data:`HEALTH_STATE_KIND`), applies the report and writes the state back
    at the version it loaded; when another hub process wrote it meanwhile the
    write fails, and the report is applied again to the state as it is now.
    So reports of one device handled by several processes (or after a
    restart) continue one baseline, and alert as one process handling them
    all would (ADR 0751). Only alerts of the attempt that was stored are raised.

    Args:
        detection: Stores alerts and carries out the response.
        config: The health detector's settings.
        states: Where devices' detector state lives (None: in this process only).
        clock: Time of the state writes (None: the detection service's clock).
    """

    def __init__(self, detection: DetectionService, config: HealthConfig | None = None, *,
                 states: DetectorStateStore | None = None, clock: Clock | None = None) -> None:
        self.detection = detection
        self.config = config or HealthConfig()
        self.states: DetectorStateStore = states if states is not None else MemoryDetectorStateStore()
        self.clock = clock or detection.clock
        self._lock = threading.Lock()
        #: Reports accepted, and refused by reason code.
        self.reports_accepted = 0
        self.refused: Counter[str] = Counter()
        #: Writes that lost to another process's and were applied again.
        self.conflicts = 0

    def report(self, req: VerifiedRequest) -> dict[str, Any]:
        """One device's health report (a verified, authorized ``report_health`` request about itself).

        Raises:
            MalformedError: the report does not decode (the ``health_*`` reason is logged and counted).
            StorageError: ``detector_state_conflict`` after :data:`STATE_ATTEMPTS` lost writes in a row.
        """
        try:
            report = decode_health_report(req.body["metrics"])
        except MalformedError as exc:
            self.refused[exc.code] += 1
            log.warning("health report from %s refused: %s", req.device_id, exc.code)
            raise MalformedError(f"health report refused ({exc.code})") from None
        alerts, learning = self._apply(req.device_id, report)
        with self._lock:
            self.reports_accepted += 1
        actions = self.detection.raise_alerts(alerts) if alerts else []
        return {"alerts": len(alerts), "actions": len(actions), "learning": learning}

    def detector(self, device_id: str) -> HealthDetector:
        """A detector holding ``device_id``'s stored state (empty if none, or if the stored state is unreadable)."""
        return self._load(device_id)[0]

    def _load(self, device_id: str) -> tuple[HealthDetector, int | None]:
        stored = self.states.load(HEALTH_STATE_KIND, device_id)
        return self._detector(device_id, stored), None if stored is None else stored.version

    def _detector(self, device_id: str, stored: VersionedState | None) -> HealthDetector:
        detector = HealthDetector(self.config)
        if stored is None:
            return detector
        try:
            detector.import_state(device_id, stored.body)
        except MalformedError as exc:  # relearn rather than fail every report of the device
            log.error("health state of %s unreadable (%s): learning it again", device_id, exc.code)
        return detector

    def _apply(self, device_id: str, report: HealthReport) -> tuple[list[Alert], bool]:
        def apply(stored: Mapping[str, VersionedState]) -> tuple[dict[str, bytes], tuple[list[Alert], bool]]:
            detector = self._detector(device_id, stored.get(device_id))
            alerts = detector.observe(device_id, report)
            body = detector.export_state(device_id)
            if body is None:  # observe() keeps the device it was given; the check keeps mypy honest
                raise StorageError(f"health state of {device_id} was not kept", code="detector_state_missing")
            return {device_id: body}, (alerts, detector.learning(device_id))

        return apply_shared(self.states, HEALTH_STATE_KIND, [device_id], self.clock, apply,
                            on_conflict=self._conflicted)

    def _conflicted(self) -> None:
        with self._lock:
            self.conflicts += 1


class HubSignalsService:
    """The hub's own observations of devices (refused requests, appraisals) into the behaviour rules.

    Each device's refusal times and alert throttles live in the shared
    detector-state store (kinds :data:`REFUSALS_STATE_KIND` and
    :data:`APPRAISALS_STATE_KIND`), so refusals of one device seen by several
    hub processes add up to one count, and a restart does not forget them
    (ADR 0752).

    Args:
        detection: Stores alerts and carries out the response.
        rule: The refusal rule (default thresholds when None).
        states: Where devices' rule state lives (None: in this process only).
        clock: Time of the state writes (None: the detection service's clock).
    """

    def __init__(self, detection: DetectionService, rule: RefusalRule | None = None, *,
                 states: DetectorStateStore | None = None, clock: Clock | None = None) -> None:
        self.detection = detection
        self.rule = rule or RefusalRule()
        self.appraisals = AppraisalRule()
        self.states: DetectorStateStore = states if states is not None else MemoryDetectorStateStore()
        self.clock = clock or detection.clock
        self._lock = threading.Lock()
        #: Writes that lost to another process's and were applied again.
        self.conflicts = 0

    def _shared(self, kind: str, device_id: str, rule: RefusalRule | AppraisalRule,
                observe: Callable[[], list[Alert]]) -> list[Alert]:
        """``observe`` run on ``device_id``'s stored state of ``rule``, the new state stored (compare-and-set)."""
        def apply(stored: Mapping[str, VersionedState]) -> tuple[dict[str, bytes], list[Alert]]:
            row = stored.get(device_id)
            try:
                rule.import_state(device_id, None if row is None else row.body)
            except MalformedError as exc:  # count afresh rather than drop every signal of the device
                log.error("%s state of %s unreadable (%s): counting afresh", kind, device_id, exc.code)
            alerts = observe()
            body = rule.export_state(device_id)
            return ({} if body is None else {device_id: body}), alerts

        with self._lock:  # the rule objects are this process's scratch space, one input at a time
            try:
                return apply_shared(self.states, kind, [device_id], self.clock, apply, on_conflict=self._conflicted)
            finally:  # held in the store, not here: the rule stays empty, so its look-ups stay one device long
                rule.import_state(device_id, None)

    def _conflicted(self) -> None:
        self.conflicts += 1

    def refused(self, device_id: str, action: str, reason: str, now: datetime) -> None:
        """A device request was refused (called by the device plane after auditing the refusal).

        Refusals of a device its posture already explains (quarantined,
        failed attestation, risk at the step-up level or above) are not
        counted: they are containment working, and counting them would feed
        its risk back into more containment after an operator released it.
        Never raises: the refusal stands whatever happens to the alert (a failure is logged).
        """
        self._count(device_id, action, reason, 1, now)

    def rejected(self, device_id: str, reason: str, count: int, now: datetime) -> None:
        """Ingest refused ``count`` of the device's readings in one batch for ``reason`` (counted as refusals of
        ``publish``, at most 10 per batch, in one write of the device's state; never raises)."""
        self._count(device_id, "publish", reason, min(count, 10), now)

    def _count(self, device_id: str, action: str, reason: str, count: int, now: datetime) -> None:
        posture = self.detection.posture.posture.get(device_id)
        if count < 1 or posture is None or posture.quarantined or posture.trust_tier == "failed" or \
                posture.risk_score >= STEP_UP_RISK:
            return
        refusals = [Refusal(now.timestamp(), device_id, reason, action)] * count
        try:
            alerts = self._shared(REFUSALS_STATE_KIND, device_id, self.rule, lambda: self.rule.observe(refusals))
        except IotGuardError as exc:
            log.error("refusal of %s not counted: %s", device_id, exc.code)
            return
        self._raise(device_id, alerts)

    def appraised(self, device_id: str, tier: str, reasons: Sequence[str], now: datetime) -> None:
        """An attestation appraisal of the device (called by the attestation service once it is applied).

        Never raises (a failure is logged). An appraisal the rule does not alert on (affirming) changes no state,
        so it costs no read or write of the shared store (ADR 0812: one transaction per appraisal).
        """
        if tier not in AppraisalRule.TIERS:
            return
        try:
            alerts = self._shared(APPRAISALS_STATE_KIND, device_id, self.appraisals,
                                  lambda: self.appraisals.observe(device_id, tier, reasons, now.timestamp()))
        except IotGuardError as exc:
            log.error("appraisal of %s not counted: %s", device_id, exc.code)
            return
        self._raise(device_id, alerts)

    def _raise(self, device_id: str, alerts: list[Alert]) -> None:
        if not alerts:
            return
        try:
            self.detection.raise_alerts(alerts)
        except IotGuardError as exc:
            log.error("alert on %s not raised: %s", device_id, exc.code)
