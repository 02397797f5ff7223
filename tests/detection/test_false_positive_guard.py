"""False-positive guard: a fleet-wide benign change must not quarantine more than the blast radius."""

from __future__ import annotations

from datetime import UTC, datetime

from iotguard.detection import (
    ActionKind,
    ActionStatus,
    DeviceView,
    FleetView,
    FlowDetector,
    ResponseState,
    parse_playbook,
    plan,
)
from iotguard.sim import traffic

from .conftest import batches

AGGRESSIVE = b"""
format = "iotguard-playbook/1"
name = "aggressive"
revision = 1

[guard_rails]
blast_radius_percent = 10

[[rules]]
name = "contain-anomalies"
detectors = ["autoencoder", "new_port"]
actions = ["quarantine"]
"""


def test_firmware_update_of_a_whole_model_stays_within_blast_radius() -> None:
    """Every thermostat updates firmware and changes behaviour together: many alerts, few quarantines."""
    fleet = traffic.make_fleet(per_model=10, segments=1, models=("thermo", "meter"))
    detector = FlowDetector(devices={d.address: d.device_id for d in fleet},
                            models={d.device_id: d.model for d in fleet})
    t0 = 1_700_000_000.0
    detector.fit(batches(traffic.benign_traffic(fleet, t0, 2 * 3600, seed=21).flows))
    start = t0 + 2 * 3600
    after = traffic.firmware_change(fleet, "thermo", start, 900, seed=22).merged(
        traffic.benign_traffic([d for d in fleet if d.model == "meter"], start, 900, seed=23))
    alerts = [a for b in batches(after.flows) for a in detector.process(b)]
    thermos = {d.device_id for d in fleet if d.model == "thermo"}
    alerted = {a.device for a in alerts}
    assert len(alerted & thermos) >= 5  # the detector does notice the change ...

    view = FleetView({d.device_id: DeviceView(d.device_id, d.segment, d.model) for d in fleet})
    actions = plan(alerts, parse_playbook(AGGRESSIVE), view, ResponseState(), datetime.now(UTC))
    executed = [a for a in actions if a.kind is ActionKind.QUARANTINE and a.status is ActionStatus.EXECUTE]
    held = [a for a in actions if a.kind is ActionKind.QUARANTINE and a.reason == "blast_radius"]
    assert len(executed) <= 2  # ... but 10 % of a 20-device segment is the most it contains by itself
    assert held  # the rest waits for an operator
