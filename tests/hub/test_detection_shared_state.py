"""Detection state shared by hub processes: hub-signal counters and the flow monitor over one database.

Two service objects over two engines on one SQLite file (PostgreSQL where
the server is available) are two hub processes. Each test splits one
device's traffic or refusals between them: what one process alone would
have alerted on, the two together must alert on too (ADR 0752).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from iotguard.clock import FixedClock
from iotguard.detection import Alert, FlowBatch, FlowMonitor, MonitorConfig, encode_flow_report
from iotguard.detection.model_state import export_scorer
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.services import sensing
from iotguard.hub.services.sensing import (
    ADDRESS_INVENTORY_FILE,
    FLOW_STATE_KIND,
    REFUSALS_STATE_KIND,
    FlowIngestService,
    HubSignalsService,
)
from iotguard.hub.stores.detector_state import (
    DetectorStateStore,
    MemoryDetectorStateStore,
    SqlDetectorStateStore,
    StateWrite,
)
from iotguard.identity import VerifiedRequest
from iotguard.sim import traffic

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class _Detection:
    """Stands in for the detection service: records the alerts raised; every device in good standing."""

    clock: FixedClock = field(default_factory=lambda: FixedClock(NOW))
    raised: list[Alert] = field(default_factory=list)
    posture: Any = field(default_factory=lambda: SimpleNamespace(posture=SimpleNamespace(
        get=lambda _d: SimpleNamespace(quarantined=False, trust_tier="verified", risk_score=0))))

    def raise_alerts(self, alerts: list[Alert]) -> list[Any]:
        self.raised.extend(alerts)
        return []


@pytest.fixture(params=["sqlite", "postgresql"])
def two_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[DetectorStateStore, ...]]:
    """Two stores over one database, on two engines (two hub processes)."""
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    a, b = make_engine(url), make_engine(url)
    migrate(a)
    yield SqlDetectorStateStore(a), SqlDetectorStateStore(b)
    a.dispose()
    b.dispose()


def _signals(store: DetectorStateStore, sink: _Detection) -> HubSignalsService:
    return HubSignalsService(sink, states=store)  # type: ignore[arg-type]


def test_policy_denials_split_across_two_hub_processes_add_up_to_an_alert(
        two_processes: tuple[DetectorStateStore, ...]) -> None:
    """A probing device whose requests land on two hub processes stays under each one's threshold (5 in 60 s)
    unless the counts are shared: 3 + 2 denials within 40 s are one ``policy_denials`` alert."""
    sink = _Detection()
    one, two = _signals(two_processes[0], sink), _signals(two_processes[1], sink)
    for i in range(5):
        (one if i % 2 == 0 else two).refused("dev-p", "report_flows", "policy_denied", NOW + timedelta(seconds=10 * i))
    assert [(a.device, a.detector) for a in sink.raised] == [("dev-p", "policy_denials")]
    # The throttle is shared too: the next denials, on either process, do not alert again within realert_s.
    for i in range(5, 12):
        (one if i % 2 == 0 else two).refused("dev-p", "report_flows", "policy_denied", NOW + timedelta(seconds=10 * i))
    assert len(sink.raised) == 1


def test_restarted_hub_process_keeps_counting_policy_denials(two_processes: tuple[DetectorStateStore, ...]) -> None:
    sink = _Detection()
    first = _signals(two_processes[0], sink)
    for i in range(4):
        first.refused("dev-p", "renew", "policy_denied", NOW + timedelta(seconds=i))
    restarted = _signals(two_processes[1], sink)
    restarted.refused("dev-p", "renew", "policy_denied", NOW + timedelta(seconds=4))
    assert [a.detector for a in sink.raised] == ["policy_denials"]


def test_attestation_alert_throttle_is_shared_by_hub_processes(two_processes: tuple[DetectorStateStore, ...]) -> None:
    sink = _Detection()
    one, two = _signals(two_processes[0], sink), _signals(two_processes[1], sink)
    one.appraised("dev-a", "contraindicated", ["pcr_mismatch"], NOW)
    two.appraised("dev-a", "contraindicated", ["pcr_mismatch"], NOW + timedelta(seconds=30))
    assert [a.detector for a in sink.raised] == ["attestation_failed"]  # one alert per 300 s, whichever process


class _Counting(MemoryDetectorStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def load_many(self, kind: str, device_ids: Any) -> Any:
        self.calls += 1
        return super().load_many(kind, device_ids)

    def save_many(self, kind: str, writes: Sequence[StateWrite], now: datetime) -> dict[str, int]:
        self.calls += 1
        return super().save_many(kind, writes, now)


def test_an_affirming_appraisal_costs_no_shared_state_access() -> None:
    """Every appraisal is one transaction (ADR 0812); the appraisal rule keeps state only for warning and
    contraindicated results, so an affirming one must not read or write the shared store."""
    store, sink = _Counting(), _Detection()
    signals = _signals(store, sink)
    for i in range(3):
        signals.appraised("dev-a", "affirming", [], NOW + timedelta(seconds=i))
    assert store.calls == 0 and sink.raised == []
    signals.appraised("dev-a", "contraindicated", ["pcr_mismatch"], NOW + timedelta(seconds=5))
    assert store.calls == 2 and [a.detector for a in sink.raised] == ["attestation_failed"]


class _Interleaved(MemoryDetectorStateStore):
    """Between this process's load and its next write, the peer process handles ``pending`` refusals."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: HubSignalsService | None = None
        self.pending: list[datetime] = []

    def save_many(self, kind: str, writes: Sequence[StateWrite], now: datetime) -> dict[str, int]:
        pending, self.pending = self.pending, []  # the peer's own writes go straight through
        for when in pending if self.peer is not None else []:
            self.peer.refused(writes[0].device_id, "renew", "policy_denied", when)
        return super().save_many(kind, writes, now)


def test_concurrent_refusals_on_two_processes_lose_neither_count() -> None:
    """Compare-and-set: the process whose write lost applies its refusal again to the peer's state."""
    store = _Interleaved()
    sink = _Detection()
    peer, service = _signals(store, sink), _signals(store, sink)
    service.refused("dev-p", "renew", "policy_denied", NOW)
    store.peer = peer
    store.pending = [NOW + timedelta(seconds=1), NOW + timedelta(seconds=2)]  # land during the next refusal
    service.refused("dev-p", "renew", "policy_denied", NOW + timedelta(seconds=3))
    assert service.conflicts == 1 and peer.conflicts == 0
    assert sink.raised == []  # 4 counted so far, none lost, none doubled
    service.refused("dev-p", "renew", "policy_denied", NOW + timedelta(seconds=4))
    assert [a.detector for a in sink.raised] == ["policy_denials"]
    stored = store.load(REFUSALS_STATE_KIND, "dev-p")
    assert stored is not None and stored.version == 5


# -- the flow monitor: per-host state and learned baselines shared ---------------------------------------

T0 = 1_767_225_600.0


def _flows(store: DetectorStateStore, sink: _Detection, data_dir: Path,
           config: MonitorConfig | None = None) -> FlowIngestService:
    return FlowIngestService(sink, data_dir, lambda: {}, config=config, states=store)  # type: ignore[arg-type]


def _fleet(data_dir: Path) -> list[traffic.SimDevice]:
    sims = traffic.make_fleet(per_model=1, segments=1)[:3]
    (data_dir / ADDRESS_INVENTORY_FILE).write_text("".join(f"{d.address} {d.device_id}\n" for d in sims))
    return sims


def _send(service: FlowIngestService, batch: FlowBatch) -> dict[str, Any]:
    body = {"flows": encode_flow_report(batch)}
    return service.report(VerifiedRequest("report_flows", "sensor-1", NOW, b"n" * 16, body, b""))


def _parts(batch: FlowBatch, size: int) -> list[FlowBatch]:
    batch = batch.take(batch.time_order())
    return [batch.take(slice(i, i + size)) for i in range(0, len(batch), size)]


def test_scan_split_across_two_hub_processes_crosses_the_fanout_threshold(
        two_processes: tuple[DetectorStateStore, ...], tmp_path: Path) -> None:
    """30 telnet SYNs to new addresses within a second, reported in turns to two hub processes (a sensor
    reconnecting, or a balancer): each process saw 15, under the 20 of ``scan_fanout``; together one alert."""
    sims = _fleet(tmp_path)
    sink = _Detection()
    one, two = _flows(two_processes[0], sink, tmp_path), _flows(two_processes[1], sink, tmp_path)
    scan = FlowBatch.from_flows(traffic.mirai_scan(sims[0], T0, 2.0).flows[:30])
    for i, part in enumerate(_parts(scan, 5)):
        _send(one if i % 2 == 0 else two, part)
    assert [(a.device, a.detector) for a in sink.raised] == [(sims[0].device_id, "scan_fanout")]
    assert one.flows_accepted == two.flows_accepted == 15


def _reference(batches: list[FlowBatch], config: MonitorConfig, inventory: dict[str, str]) -> list[list[Alert]]:
    """What one process seeing every batch alerts on, batch by batch."""
    monitor = FlowMonitor(config, devices=inventory, models={})
    return [monitor.observe(b) for b in batches]


def test_flow_baseline_learned_by_one_process_is_used_by_a_restarted_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(url)
    migrate(engine)
    sims = _fleet(tmp_path)
    config = MonitorConfig(learn_flows=300, learn_s=0.0)
    benign = _parts(FlowBatch.from_flows(traffic.benign_traffic(sims, T0, 2400.0).flows), 100)
    later = _parts(FlowBatch.from_flows(traffic.benign_traffic(sims, T0 + 2400.0, 600.0, seed=5).flows), 100)
    exfil = FlowBatch.from_flows(traffic.slow_exfiltration(sims[1], T0 + 3010.0, 600.0, period_s=20).flows)
    first = _flows(SqlDetectorStateStore(engine), _Detection(), tmp_path, config)
    answers = [_send(first, b) for b in benign]
    assert answers[-1]["learning"] is False
    learned = export_scorer(first._current().detector.scorer)
    engine.dispose()

    restarted_engine = make_engine(url)  # a new process: nothing in memory
    sink = _Detection()
    restarted = _flows(SqlDetectorStateStore(restarted_engine), sink, tmp_path, config)
    expected = _reference([*benign, *later, exfil], config, {d.address: d.device_id for d in sims})
    for batch, want in zip([*later, exfil], expected[len(benign):], strict=True):
        answer = _send(restarted, batch)
        assert answer["learning"] is False  # no relearning
        assert sink.raised[-len(want):] == want if want else answer["alerts"] == 0
    assert export_scorer(restarted._current().detector.scorer) == learned  # the same baseline, byte for byte
    assert "autoencoder" in {a.detector for a in expected[-1]}  # the exfiltration is anomalous to the learned baseline
    assert {(a.device, a.detector) for a in sink.raised[-len(expected[-1]):]} >= {(sims[1].device_id, "autoencoder")}
    restarted_engine.dispose()


class _FlowInterleaved(MemoryDetectorStateStore):
    """Between this process's load and its next write of host rows, the peer process reports ``pending``."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: FlowIngestService | None = None
        self.pending: list[FlowBatch] = []

    def save_many(self, kind: str, writes: Sequence[StateWrite], now: datetime) -> dict[str, int]:
        pending, self.pending = self.pending, []
        for batch in pending if self.peer is not None else []:
            _send(self.peer, batch)
        return super().save_many(kind, writes, now)


def test_concurrent_flow_batches_on_two_processes_lose_neither_count(tmp_path: Path) -> None:
    """A batch whose write lost to the peer's is applied again to the peer's state: the scanner's new
    destinations of both batches count, and the result is what one process taking them in that order gives."""
    sims = _fleet(tmp_path)
    store = _FlowInterleaved()
    sink = _Detection()
    peer, service = _flows(store, sink, tmp_path), _flows(store, sink, tmp_path)
    scan = _parts(FlowBatch.from_flows(traffic.mirai_scan(sims[0], T0, 2.0).flows[:30]), 15)
    store.peer, store.pending = peer, [scan[0]]  # the peer's half lands while this process handles its own
    _send(service, scan[1])
    assert service.conflicts == 1 and peer.conflicts == 0
    assert [(a.device, a.detector) for a in sink.raised] == [(sims[0].device_id, "scan_fanout")]
    assert sink.raised == [a for alerts in _reference(scan, MonitorConfig(), {d.address: d.device_id for d in sims})
                           for a in alerts]
    row = store.load(FLOW_STATE_KIND, sims[0].address)
    assert row is not None and row.version == 2  # one write per batch, none lost


def test_rejected_readings_of_one_batch_count_in_one_write(two_processes: tuple[DetectorStateStore, ...]) -> None:
    sink = _Detection()
    one, two = _signals(two_processes[0], sink), _signals(two_processes[1], sink)
    one.rejected("dev-r", "policy_denied", 3, NOW)
    two.rejected("dev-r", "policy_denied", 50, NOW + timedelta(seconds=1))  # at most 10 counted per batch
    assert [a.detector for a in sink.raised] == ["policy_denials"]
    stored = two_processes[0].load(REFUSALS_STATE_KIND, "dev-r")
    assert stored is not None and stored.version == 2


def test_host_rows_not_written_for_the_ttl_are_pruned_so_state_stays_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One row per address ever seen would grow without bound (a scanner names thousands): rows older than the
    TTL are deleted every PRUNE_EVERY batches, the way the in-process monitor forgot its least recent hosts."""
    monkeypatch.setattr(sensing, "PRUNE_EVERY", 2)
    sims = _fleet(tmp_path)
    store, sink = MemoryDetectorStateStore(), _Detection()
    service = _flows(store, sink, tmp_path)
    scan = FlowBatch.from_flows(traffic.mirai_scan(sims[0], T0, 2.0).flows[:10])
    _send(service, scan)
    scanned = set(scan.resp_h.tolist())
    assert scanned <= set(store.load_many(FLOW_STATE_KIND, scanned))
    sink.clock.advance(8 * 86_400)
    later = FlowBatch.from_flows(traffic.mirai_scan(sims[1], T0 + 8 * 86_400, 2.0, seed=9).flows[:10])
    assert not scanned & set(later.resp_h.tolist())
    _send(service, later)  # the second batch: a prune
    assert service.pruned >= len(scanned)
    assert store.load_many(FLOW_STATE_KIND, scanned) == {}
    assert set(later.orig_h.tolist()) <= set(store.load_many(FLOW_STATE_KIND, set(later.orig_h.tolist())))


def test_the_models_ports_learned_by_one_process_are_adopted_by_another(tmp_path: Path) -> None:
    """ADR 0712: the device models' ports travel in the shared baseline's index, so every process judges alike."""
    sims = traffic.make_fleet(per_model=2, segments=1)
    (tmp_path / ADDRESS_INVENTORY_FILE).write_text("".join(f"{d.address} {d.device_id}\n" for d in sims))
    models = {d.device_id: d.model for d in sims}
    config = MonitorConfig(learn_flows=300, learn_s=0.0)
    store = MemoryDetectorStateStore()
    first = FlowIngestService(_Detection(), tmp_path, lambda: models, config=config, states=store)  # type: ignore[arg-type]
    for batch in _parts(FlowBatch.from_flows(traffic.benign_traffic(sims, T0, 2400.0).flows), 100):
        _send(first, batch)
    learned = first._current().detector.model_ports
    assert learned and not first._current().learning
    second = FlowIngestService(_Detection(), tmp_path, lambda: models, config=config, states=store)  # type: ignore[arg-type]
    _send(second, FlowBatch.from_flows(traffic.benign_traffic(sims, T0 + 2400.0, 60.0, seed=5).flows))
    assert second._current().detector.model_ports == learned
