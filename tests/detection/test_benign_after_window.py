"""A benign fleet past the learning window, under the hub's default monitor settings (ADR 0710).

The monitor used to close its window after the fleet's first 2,000 flows,
which a 50-device fleet sends in about eight minutes: the damped statistics
had not settled and a meter had reported eight times. In the hour after
it, the learned baselines alerted on most benign devices, several at high
severity (which the default playbook acts on). Now the window also spans
two hours of flow time, and a lone unusual flow (a firmware check every few
hours) is low.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from iotguard.detection import Alert, FlowBatch, FlowMonitor, MonitorConfig, Severity
from iotguard.hub.services.detection import RISK_HALF_LIFE_S, RISK_WEIGHT
from iotguard.hub.services.sensing import STEP_UP_RISK
from iotguard.sim import traffic

from .conftest import T0, Trained, batches


def _after_window(config: MonitorConfig, per_model: int, hour_s: float = 3600.0) -> tuple[FlowMonitor, list[Alert]]:
    fleet = traffic.make_fleet(per_model=per_model, segments=2)
    monitor = FlowMonitor(config, devices={d.address: d.device_id for d in fleet},
                          models={d.device_id: d.model for d in fleet})
    flows = traffic.benign_traffic(fleet, T0, config.learn_s + 600.0 + hour_s, seed=3).flows
    after: list[Alert] = []
    closed_at = None
    for batch in batches(flows):
        alerts = monitor.observe(batch)
        if closed_at is not None:
            after += alerts
        elif not monitor.learning:
            closed_at = float(batch.ts[-1])
    assert closed_at is not None, "the window never closed"
    return monitor, [a for a in after if a.window_start_us / 1e6 <= closed_at + hour_s]


def test_benign_fleet_an_hour_past_the_default_window_raises_no_high_alert() -> None:
    config = MonitorConfig()  # what the hub runs
    monitor, alerts = _after_window(config, per_model=6)
    assert monitor.detector.span is not None
    assert not [a for a in alerts if a.severity >= Severity.HIGH], alerts
    devices = len(monitor.detector.devices)
    # Medium findings of the learned baselines on a few devices (measured: 4 of 30; with the window closed
    # after 2,000 flows alone, 17 of 30 and one high) ...
    assert len({a.device for a in alerts if a.detector == "autoencoder"}) <= devices // 5, alerts
    # ... and low new-port findings at most: a device's rare NTP or firmware-check port is its model's when two
    # of the model's devices used it in the window (ADR 0712); six meters, once a minute each, may not have.
    assert {a.detector for a in alerts} <= {"autoencoder", "new_port"}
    assert all(a.severity is Severity.LOW for a in alerts if a.detector == "new_port")
    # No benign device's risk (the hub's weights and half-life over these alerts) reaches the step-up line.
    assert max(_peak_risk(alerts).values(), default=0.0) < STEP_UP_RISK


def _peak_risk(alerts: list[Alert]) -> dict[str, float]:
    """Each device's highest risk score over the run, as the hub sums it (decaying weights of its alerts)."""
    peak: dict[str, float] = {}
    for a in alerts:
        now = a.window_end_us / 1e6
        risk = sum(RISK_WEIGHT[b.severity] * 0.5 ** ((now - b.window_end_us / 1e6) / RISK_HALF_LIFE_S)
                   for b in alerts if b.device == a.device and b.window_end_us <= a.window_end_us)
        peak[a.device] = max(peak.get(a.device, 0.0), risk)
    return peak


def test_a_lone_unusual_flow_is_low_and_several_in_a_batch_are_high(fresh: Trained) -> None:
    """High severity (the default playbook re-attests) needs the per-batch condition too; a lone flow is low
    (it adds 5 to the device's risk, not 20: a benign device whose firmware check recurs every half hour
    reached risk 83 on medium ones, near the containment line of 90)."""
    device = fresh.fleet[7]
    upload = traffic.slow_exfiltration(device, fresh.start + 30.0, 1200.0).flows[0]
    background = traffic.benign_traffic(fresh.fleet, fresh.start, 60.0, seed=8).flows

    def learned(uploads: int) -> list[Alert]:
        detector = copy.deepcopy(fresh.detector)
        flows = sorted([*background, *(replace(upload, ts=upload.ts + i) for i in range(uploads))],
                       key=lambda f: f.ts)
        return [a for a in detector.process(FlowBatch.from_flows(flows))
                if a.device == device.device_id and a.detector == "autoencoder"]

    lone = learned(1)
    assert [a.severity for a in lone] == [Severity.LOW] and lone[0].score >= fresh.detector.config.strong_score
    assert [a.severity for a in learned(3)] == [Severity.HIGH]


def test_the_window_spans_learn_s_of_flow_time_and_holds_at_most_max_window_rows() -> None:
    fleet = traffic.make_fleet(per_model=4, segments=2)
    config = MonitorConfig(learn_flows=1000, learn_s=1800.0, max_window_rows=1000)
    monitor = FlowMonitor(config, devices={d.address: d.device_id for d in fleet},
                          models={d.device_id: d.model for d in fleet})
    flows = traffic.benign_traffic(fleet, T0, 2400.0, seed=4).flows
    held = []
    for batch in batches(flows):
        monitor.observe(batch)
        if monitor.learning:
            held.append(monitor.detector.window_rows)
            assert monitor.detector.window_rows <= config.max_window_rows
            span = monitor.detector.span
            assert span is not None and span[1] - span[0] < config.learn_s + 600.0
    assert not monitor.learning
    # Thinned (the window saw more than twice the bound), not emptied.
    assert monitor.flows_seen > 2 * config.max_window_rows and max(held) > config.max_window_rows // 2
    first_after = next(i for i, b in enumerate(batches(flows)) if b.ts[-1] - flows[0].ts >= config.learn_s)
    assert len(held) == first_after  # it closed at the first batch to reach learn_s, not at 1,000 flows
