"""A detector fitted on simulated benign fleet traffic, shared by the scenario tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest

from iotguard.detection import Alert, FlowBatch, FlowDetector, FlowMonitor, MonitorConfig, parse_feed
from iotguard.detection.flow_state import HostStates
from iotguard.sim import traffic

T0 = 1_700_000_000.0
TRAIN_S = 2 * 3600.0
BATCH = 256


@dataclass
class Trained:
    detector: FlowDetector
    fleet: list[traffic.SimDevice]
    start: float  # first second after training


def batches(flows: list, size: int = BATCH) -> list[FlowBatch]:
    whole = FlowBatch.from_flows(flows)
    return [whole.take(slice(i, i + size)) for i in range(0, len(whole), size)]


def fitted(seed: int = 1) -> Trained:
    fleet = traffic.make_fleet(per_model=2, segments=2)
    detector = FlowDetector(devices={d.address: d.device_id for d in fleet},
                            models={d.device_id: d.model for d in fleet},
                            feed=parse_feed(b"# test feed\n203.0.113.0/24\n"))
    detector.fit(batches(traffic.benign_traffic(fleet, T0, TRAIN_S, seed=seed).flows))
    return Trained(detector, fleet, T0 + TRAIN_S)


@pytest.fixture(scope="module")
def trained() -> Trained:
    return fitted()


@pytest.fixture(scope="module")
def _pristine() -> Trained:
    return fitted()


@pytest.fixture
def fresh(_pristine: Trained) -> Trained:
    """A detector that saw only benign traffic (scenarios must not bleed into each other)."""
    return copy.deepcopy(_pristine)


def through_stored_rows(config: MonitorConfig, inventory: dict[str, str],
                        batches: list[FlowBatch]) -> tuple[list[Alert], dict[str, bytes]]:
    """Every batch through a monitor that keeps everything and through one reset before each batch and given
    only the batch's stored host rows (as each hub process is); checks they alert alike. Returns the alerts
    and the last stored rows."""
    reference, shared = FlowMonitor(config, devices=inventory), FlowMonitor(config, devices=inventory)
    rows: dict[str, bytes] = {}
    alerts: list[Alert] = []
    for batch in batches:
        expected = reference.observe(batch)
        shared.detector.reset_hosts()
        hosts = HostStates(shared.detector, batch, rows)
        assert hosts.unreadable == {}
        assert shared.observe(batch) == expected
        rows.update(hosts.export())
        alerts += expected
    return alerts, rows
