"""The streaming monitor's learning window does not learn an attack as normal."""

from __future__ import annotations

import numpy as np

from iotguard.detection import Alert, FlowMonitor, MonitorConfig, Severity, roc_auc
from iotguard.detection.autoencoder import AutoencoderConfig, AutoencoderEnsemble
from iotguard.sim import traffic

from .conftest import T0, batches


def _monitor(fleet: list[traffic.SimDevice], learn_flows: int) -> FlowMonitor:
    return FlowMonitor(MonitorConfig(learn_flows=learn_flows, learn_s=0.0),
                       devices={d.address: d.device_id for d in fleet}, models={d.device_id: d.model for d in fleet})


def _observe(monitor: FlowMonitor, flows: list) -> list[Alert]:
    return [a for b in batches(flows) for a in monitor.observe(b)]


def test_device_scanning_during_its_learning_window_is_still_alerted_after_it() -> None:
    fleet = traffic.make_fleet(per_model=2, segments=2)
    scanner = fleet[0]
    window = traffic.benign_traffic(fleet, T0, 3600.0, seed=21).merged(
        traffic.mirai_scan(scanner, T0 + 900.0, 2700.0, rate=3.0, seed=22))
    monitor = _monitor(fleet, learn_flows=len(window.flows))
    during = _observe(monitor, window.flows)
    assert not monitor.learning
    assert (scanner.device_id, "scan_fanout") in {(a.device, a.detector) for a in during}
    assert monitor.detector.excluded == {scanner.address}
    assert scanner.address not in monitor.detector.rules[1].known  # the port baseline forgot it too
    # No baseline of its own was fitted from its (scanning) rows.
    assert f"device:{scanner.device_id}" not in monitor.detector.scorer.thresholds()

    # The scan goes on after the window: the learned baseline still calls it anomalous.
    start = T0 + 3600.0
    later = traffic.benign_traffic(fleet, start, 600.0, seed=23).merged(
        traffic.mirai_scan(scanner, start, 600.0, rate=3.0, seed=24))
    after = _observe(monitor, later.flows)
    # Strong enough for the playbook (its anomalous-behaviour rule acts from high): without the exclusion the
    # scanner gets a baseline of its own learned from its scanning, which scores the scan ~1.5 (medium), not ~27.
    strong = [a for a in after if a.device == scanner.device_id and a.detector == "autoencoder"
              and a.severity >= Severity.HIGH and a.score >= 10.0]
    assert strong
    others = {a.detector for a in after if a.device != scanner.device_id}
    assert not others & {"scan_fanout", "beaconing", "known_bad_address"}  # the others behaved



def test_scan_straddling_the_end_of_the_learning_window_is_alerted_by_the_learned_baseline() -> None:
    """Without the exclusion the scan's first rows are learned as normal and its rest raises no anomaly."""
    fleet = traffic.make_fleet(per_model=2, segments=2)
    scanner = fleet[0]
    monitor = _monitor(fleet, learn_flows=1500)
    benign = traffic.benign_traffic(fleet, T0, 3600.0).flows
    assert _observe(monitor, benign[:600]) == [] and monitor.learning
    scan = traffic.mirai_scan(scanner, T0 + 700.0, 60.0).flows  # 2,400 flows: the window closes at flow 1,500
    alerts = _observe(monitor, scan)
    assert not monitor.learning
    assert {(a.device, a.detector) for a in alerts} == {(scanner.device_id, "scan_fanout"),
                                                        (scanner.device_id, "autoencoder")}


def test_small_training_set_is_trained_for_min_steps_not_for_ten_epochs() -> None:
    """A device with a few dozen rows: ten epochs are twenty gradient steps from a random start and separate
    nothing; ``min_steps`` passes over the rows until 300 steps are taken."""
    rng = np.random.default_rng(5)

    def rows(n: int) -> np.ndarray:
        z = rng.normal(size=(n, 2))
        return np.column_stack([z[:, 0], 2 * z[:, 0] + 0.1 * rng.normal(size=n), z[:, 1],
                                -z[:, 1] + 0.1 * rng.normal(size=n), z[:, 0] + z[:, 1]])

    train, benign, odd = rows(64), rows(500), rows(500)
    odd[:, 1], odd[:, 3] = -odd[:, 1], -odd[:, 3]  # the same marginals, the learned relations broken
    x, truth = np.vstack([benign, odd]), np.r_[np.zeros(500, bool), np.ones(500, bool)]
    assert AutoencoderConfig().min_steps == 300
    trained = roc_auc(AutoencoderEnsemble(AutoencoderConfig()).fit(train).score(x), truth)
    ten_epochs = roc_auc(AutoencoderEnsemble(AutoencoderConfig(min_steps=0)).fit(train).score(x), truth)
    assert trained >= 0.9 > 0.6 >= ten_epochs
