"""The streaming monitor's learning window does not learn an attack as normal."""

from __future__ import annotations

from iotguard.detection import Alert, FlowMonitor, MonitorConfig
from iotguard.sim import traffic

from .conftest import T0, batches


def _monitor(fleet: list[traffic.SimDevice], learn_flows: int) -> FlowMonitor:
    return FlowMonitor(MonitorConfig(learn_flows=learn_flows), devices={d.address: d.device_id for d in fleet},
                       models={d.device_id: d.model for d in fleet})


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
    assert scanner.device_id in {a.device for a in after if a.detector == "autoencoder"}
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
