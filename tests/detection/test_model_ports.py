"""The ports a device model's devices use (ADR 0712): learned in the window, guarded, shared, strict."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from iotguard.detection import DetectorConfig, FlowBatch, FlowMonitor, MonitorConfig, ScorerConfig
from iotguard.detection.flows import Flow
from iotguard.detection.model_ports import MAX_KEYS, ModelPorts, decode_model_ports, encode_model_ports
from iotguard.detection.model_state import INDEX_PART, export_scorer, import_scorer, model_ports
from iotguard.detection.rules import NewPortRule
from iotguard.errors import MalformedError
from iotguard.sim import traffic

from .conftest import T0, batches

TCP_443, TCP_23 = (0 << 16) | 443, (0 << 16) | 23


def _flow(ts: float, dst: str, port: int) -> Flow:
    return Flow(ts=ts, orig_h="10.0.0.5", orig_p=40000, resp_h=dst, resp_p=port, proto="tcp", duration=0.1,
                orig_bytes=100, resp_bytes=100, conn_state="SF", orig_pkts=3, resp_pkts=3, service="")


def _keys(*ports: int) -> np.ndarray:
    return np.array(ports, dtype=np.int64)


def test_a_key_is_the_models_only_when_two_devices_used_it_and_flagged_devices_never_count() -> None:
    ports = ModelPorts({"m1": "meter", "m2": "meter", "m3": "meter", "t1": "thermo"})
    ports.learn(["m1", "m1", None, "t1"], _keys(443, 123, 443, 443))
    assert ports.freeze() == {}  # one device each
    ports.learn(["m2"], _keys(443))
    assert ports.freeze() == {"meter": frozenset({443})}
    ports.learn(["m3"], _keys(23))
    ports.forget(["m3"])  # flagged while learning (a scanner): what it used is forgotten ...
    ports.learn(["m3", "m1"], _keys(23, 23))  # ... and it is never learned from again
    assert ports.freeze() == {"meter": frozenset({443})}


def test_keys_per_model_are_bounded() -> None:
    ports = ModelPorts({"a": "m", "b": "m"})
    many = np.arange(MAX_KEYS + 100, dtype=np.int64)
    ports.learn(["a"] * many.shape[0], many)
    ports.learn(["b"] * many.shape[0], many)
    assert len(ports.freeze()["m"]) == MAX_KEYS


@pytest.mark.parametrize("bad", [[], {"m": []}, {"m": [2, 1]}, {"m": [1, 1]}, {"m": [-1]}, {"m": [1 << 24]},
                                 {"m": ["443"]}, {"": [1]}, {"m": [True]}])
def test_decoding_model_ports_is_strict(bad: object) -> None:
    with pytest.raises(MalformedError) as err:
        decode_model_ports(bad)
    assert err.value.code == "detector_state_bad_value"


def test_new_port_judges_against_the_device_and_its_model() -> None:
    rule = NewPortRule(devices={"10.0.0.5": "m1"}, models={"m1": "meter"},
                       model_ports={"meter": frozenset({TCP_443})})
    rule.learn(FlowBatch.from_flows([_flow(T0 + i, "10.0.0.1", 8883) for i in range(25)]), None)  # type: ignore[arg-type]
    later = FlowBatch.from_flows([_flow(T0 + 100, "192.0.2.10", 443), _flow(T0 + 101, "192.0.2.11", 23)])
    assert rule.hits(later, None).tolist() == [False, True]  # type: ignore[arg-type]
    rule.model_ports = {}
    assert rule.hits(later, None).tolist() == [True, True]  # type: ignore[arg-type]


def test_the_monitor_learns_its_models_ports_and_shares_them_with_the_baseline() -> None:
    fleet = traffic.make_fleet(per_model=4, segments=2)
    config = MonitorConfig(DetectorConfig(scorer=ScorerConfig(min_device_rows=10**9)), learn_flows=1000, learn_s=3600.0)
    monitor = FlowMonitor(config, devices={d.address: d.device_id for d in fleet},
                          models={d.device_id: d.model for d in fleet})
    for batch in batches(traffic.benign_traffic(fleet, T0, 3700.0, seed=2).flows):
        monitor.observe(batch)
    assert not monitor.learning
    learned = monitor.detector.model_ports
    assert learned and all(TCP_23 not in keys for keys in learned.values())
    assert any((1 << 16 | 123) in keys for keys in learned.values())  # NTP, which each device uses rarely
    parts = export_scorer(monitor.detector.scorer, learned)
    assert model_ports(parts[INDEX_PART]) == learned
    other = FlowMonitor(config, devices=monitor.detector.devices, models=monitor.detector.models)
    other.detector.adopt(import_scorer(config.detector.scorer, parts), model_ports(parts[INDEX_PART]))
    rule = next(r for r in other.detector.rules if isinstance(r, NewPortRule))
    assert rule.model_ports == learned
    other.detector.reset_hosts()  # the hub does this before every batch: the models' ports stay
    rule = next(r for r in other.detector.rules if isinstance(r, NewPortRule))
    assert rule.model_ports == learned


def test_encoding_round_trips() -> None:
    ports = {"meter": frozenset({TCP_443, 1 << 16 | 123}), "thermo": frozenset({TCP_443})}
    assert decode_model_ports(encode_model_ports(ports)) == ports


def test_rare_benign_ports_after_the_window_raise_no_new_port_alert_in_a_50_device_fleet() -> None:
    """Three hours past the default window, new_port raised 40 low alerts on 17 of 50 benign devices (each a
    re-attestation, one device seven times), all for the update server's port or NTP; with the models' ports,
    none. (The learned baselines do not matter here: no per-device ensembles, to keep the test short.)"""
    fleet = traffic.make_fleet(per_model=10, segments=2)
    config = MonitorConfig(DetectorConfig(scorer=ScorerConfig(min_device_rows=10**9)))  # learn_s: the default
    monitor = FlowMonitor(config, devices={d.address: d.device_id for d in fleet},
                          models={d.device_id: d.model for d in fleet})
    flows = traffic.benign_traffic(fleet, T0, config.learn_s + 600.0 + 3 * 3600.0, seed=3).flows
    later: list[FlowBatch] = []
    for batch in batches(flows):
        if monitor.learning:
            monitor.observe(batch)
        else:
            later.append(batch)
    without = copy.deepcopy(monitor)
    without.detector.adopt(without.detector.scorer, {})  # the same detector without the models' ports

    def new_port(m: FlowMonitor) -> set[tuple[str, str]]:
        return {(a.device, str(dict(a.evidence)["new_ports"])) for b in later for a in m.observe(b)
                if a.detector == "new_port"}

    assert new_port(monitor) == set()
    assert {port for _, port in new_port(without)} == {"tcp/443", "udp/123"}
