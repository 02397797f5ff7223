"""Hosts without a baseline of their own after the learning window are learned, not alerted on (ADR 0709).

The hub's monitor learns from the fleet's first ``learn_flows`` flows; a
device enrolled after that, or one that reported too rarely in the window,
has fewer than ``min_flows`` learned flows. It goes on learning its new-port
and beaconing baselines from its own flows until it has them, and
``beaconing`` leaves it alone meanwhile (before, any timer-driven channel of
it was alerted, at high severity: a quarantine under the default playbook).
"""

from __future__ import annotations

from typing import Any

import cbor2
import numpy as np
import pytest

from iotguard.detection import Alert, Flow, FlowBatch, FlowMonitor, MonitorConfig, rules
from iotguard.detection.features import FeatureExtractor
from iotguard.detection.flows import PROTOCOLS
from iotguard.detection.rules import BeaconRule, NewPortRule
from iotguard.sim import traffic

from .conftest import T0, batches, through_stored_rows

#: A device enrolled after the window: telemetry to the hub once a minute, 2 % jitter.
NEWCOMER = traffic.SimDevice("sim-meter-new", "meter", "10.20.9.9", "seg-0")
STEADY = {"meter": traffic.TrafficProfile(60.0, 0.02, (800, 1600), (80, 160))}
WINDOW_S = 2400.0


def _setting() -> tuple[list[traffic.SimDevice], dict[str, str], MonitorConfig]:
    fleet = traffic.make_fleet(per_model=2, segments=2)
    inventory = {d.address: d.device_id for d in [*fleet, NEWCOMER]}
    return fleet, inventory, MonitorConfig(learn_flows=1500, learn_s=0.0)


def _monitor() -> tuple[list[traffic.SimDevice], FlowMonitor]:
    fleet, inventory, config = _setting()
    monitor = FlowMonitor(config, devices=inventory, models={d.device_id: d.model for d in [*fleet, NEWCOMER]})
    return fleet, monitor


def _observe(monitor: FlowMonitor, flows: list[Flow]) -> list[Alert]:
    return [a for b in batches(flows) for a in monitor.observe(b)]


def _newcomer_hour(fleet: list[traffic.SimDevice], start: float) -> list[Flow]:
    return traffic.benign_traffic(fleet, start, 3600.0, seed=42).merged(
        traffic.benign_traffic([NEWCOMER], start, 3600.0, seed=43, profiles=STEADY)).flows


def _beaconing(alerts: list[Alert], device: str) -> list[Alert]:
    return [a for a in alerts if a.device == device and a.detector == "beaconing"]


def test_device_enrolled_after_the_window_is_learned_then_judged() -> None:
    """A meter enrolled after the window reports once a minute for an hour: no beaconing (without the per-host
    learning it is alerted within minutes); with its 20 flows learned, a check-in every 20 s to a new address is."""
    fleet, monitor = _monitor()
    window = traffic.benign_traffic(fleet, T0, WINDOW_S, seed=41).flows
    _observe(monitor, window)
    assert not monitor.learning
    beacon = next(r for r in monitor.detector.rules if isinstance(r, BeaconRule))
    assert NEWCOMER.address not in beacon.flows

    hour = _observe(monitor, _newcomer_hour(fleet, T0 + WINDOW_S))
    assert _beaconing(hour, NEWCOMER.device_id) == []
    assert not {a.detector for a in hour} & {"beaconing", "scan_fanout", "known_bad_address"}
    assert beacon.flows[NEWCOMER.address] == beacon.min_flows  # it learned 20 flows, then was judged
    assert traffic.HUB_ADDRESS in beacon.known[NEWCOMER.address]  # its telemetry peer is in its baseline

    start = T0 + WINDOW_S + 3600.0
    later = traffic.benign_traffic([*fleet], start, 900.0, seed=44).merged(
        traffic.benign_traffic([NEWCOMER], start, 900.0, seed=45, profiles=STEADY)).merged(
        traffic.cnc_beacon(NEWCOMER, start + 60.0, 600.0, server="192.0.2.99"))
    alerts = _beaconing(_observe(monitor, later.flows), NEWCOMER.device_id)
    assert alerts and dict(alerts[0].evidence)["peer"] == "192.0.2.99"


def test_training_fleet_device_that_starts_beaconing_is_still_alerted() -> None:
    fleet, monitor = _monitor()
    _observe(monitor, traffic.benign_traffic(fleet, T0, WINDOW_S, seed=41).flows)
    bot = fleet[4]  # a meter, judged from the window's flows
    beacon = next(r for r in monitor.detector.rules if isinstance(r, BeaconRule))
    assert bot.model == "meter" and beacon.flows[bot.address] >= beacon.min_flows
    start = T0 + WINDOW_S
    later = traffic.benign_traffic(fleet, start, 900.0, seed=46).merged(
        traffic.cnc_beacon(bot, start + 60.0, 600.0, server="192.0.2.77"))
    alerts = _beaconing(_observe(monitor, later.flows), bot.device_id)
    assert alerts and dict(alerts[0].evidence)["peer"] == "192.0.2.77"


def test_new_device_scanning_while_it_learns_does_not_learn_the_scan() -> None:
    """A newcomer that scans after five telemetry flows: its scan's destinations never enter its baselines, it
    learns nothing later, and being barred it is judged without a baseline (its timer-driven telemetry alerts)."""
    fleet, monitor = _monitor()
    _observe(monitor, traffic.benign_traffic(fleet, T0, WINDOW_S, seed=41).flows)
    start = T0 + WINDOW_S
    scan = traffic.mirai_scan(NEWCOMER, start + 330.0, 10.0, seed=47)
    flows = traffic.benign_traffic(fleet, start, 1800.0, seed=48).merged(
        traffic.benign_traffic([NEWCOMER], start, 1800.0, seed=49, profiles=STEADY)).merged(scan).flows
    alerts = _observe(monitor, flows)
    assert any(a.device == NEWCOMER.device_id and a.detector == "scan_fanout" for a in alerts)
    scanned = {f.resp_h for f in scan.flows}
    for rule in [r for r in monitor.detector.rules if isinstance(r, NewPortRule | BeaconRule)]:
        assert not rule.known.get(NEWCOMER.address, set()) & scanned
    for rule in [r for r in monitor.detector.rules if isinstance(r, NewPortRule | BeaconRule)]:
        assert NEWCOMER.address in rule.barred and NEWCOMER.address not in rule.flows  # nor its telemetry since
    assert _beaconing(alerts, NEWCOMER.device_id)  # the barred host's timer-driven channel, with no baseline


def test_learning_after_the_window_through_stored_host_rows_is_one_detector() -> None:
    """Two hub processes over one store (each batch through a monitor given only its hosts' stored rows) learn
    the newcomer and alert exactly as one monitor; its row carries the 20 learned flows (ADR 0752)."""
    fleet, inventory, config = _setting()
    flows = [*traffic.benign_traffic(fleet, T0, WINDOW_S, seed=41).flows, *_newcomer_hour(fleet, T0 + WINDOW_S)]
    scanner = fleet[1]
    flows += traffic.mirai_scan(scanner, T0 + WINDOW_S + 3700.0, 5.0).flows
    # A second newcomer scans after a few flows: barred, it stays so in its row, and its telemetry is then judged
    # without a baseline in both processes alike.
    late = traffic.SimDevice("sim-meter-late", "meter", "10.20.9.10", "seg-0")
    inventory[late.address] = late.device_id
    flows += [*traffic.benign_traffic([late], T0 + WINDOW_S, 1800.0, seed=50, profiles=STEADY).flows,
              *traffic.mirai_scan(late, T0 + WINDOW_S + 330.0, 5.0, seed=51).flows]
    whole = FlowBatch.from_flows(flows)
    whole = whole.take(whole.time_order())
    alerts, rows = through_stored_rows(config, inventory, [whole.take(slice(i, i + 97))
                                                           for i in range(0, len(whole), 97)])
    assert _beaconing(alerts, NEWCOMER.device_id) == []
    assert any(a.device == scanner.device_id and a.detector == "scan_fanout" for a in alerts)
    row = cbor2.loads(rows[NEWCOMER.address])
    assert row["peer_flows"] == row["port_flows"] == 20 and traffic.HUB_ADDRESS in row["known_peers"]
    assert row["excluded"] is False
    barred = cbor2.loads(rows[late.address])
    assert barred["excluded"] is True and barred["peer_flows"] == barred["port_flows"] == 0
    assert _beaconing(alerts, late.device_id)


def _one_host(host: str, peers: list[str], t0: float, period: float = 20.0) -> FlowBatch:
    return FlowBatch.from_flows([Flow(ts=t0 + period * i, orig_h=host, orig_p=40000 + i, resp_h=peer, resp_p=443,
                                      proto="tcp", duration=0.1, orig_bytes=100, resp_bytes=200, conn_state="SF",
                                      orig_pkts=2, resp_pkts=2) for i, peer in enumerate(peers)])


def test_beacon_rule_alone_judges_unlearned_hosts_unless_told_they_learn() -> None:
    """Used alone (never taught), the rule alerts any timer-driven channel of a host without a baseline; the
    hub's rule leaves a device that is learning alone, but not a barred device or an address outside the site."""
    names = FeatureExtractor().names
    batch = _one_host("10.0.0.2", ["203.0.113.9"] * 30, T0)
    device = {"10.0.0.2": "dev-1"}
    for rule, alerted in ((BeaconRule(names, devices=device), True),
                          (BeaconRule(names, devices=device, alert_unlearned=False), False),
                          (BeaconRule(names, alert_unlearned=False), True),  # not a device or site host
                          (BeaconRule(names, alert_unlearned=False, local_hosts=["10.0.0.2"]), False)):
        assert rule.hits(batch, FeatureExtractor().transform(batch)).any() == alerted
    barred = BeaconRule(names, devices=device, alert_unlearned=False)
    barred.bar({"10.0.0.2"})
    assert barred.hits(batch, FeatureExtractor().transform(batch)).any()


@pytest.mark.parametrize("few_inside", [0, 16])  # learners found among each flow's host, or among the site's
@pytest.mark.parametrize("size", [1, 7, 64])
def test_learning_unjudged_hosts_equals_a_flow_by_flow_pass(size: int, few_inside: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Per batch, each host learns its first flows up to ``min_flows``, as one flow at a time would; barred hosts,
    hosts outside the site and hosts judged from the window learn nothing."""
    monkeypatch.setattr(rules, "_FEW_INSIDE", few_inside)
    rng = np.random.default_rng(3)
    hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "198.51.100.7"]
    flows = [Flow(ts=T0 + i, orig_h=str(rng.choice(hosts)), orig_p=1, resp_h=f"192.0.2.{rng.integers(1, 60)}",
                  resp_p=int(rng.integers(1, 30)), proto="udp", duration=0.0, orig_bytes=1, resp_bytes=1,
                  conn_state="SF", orig_pkts=1, resp_pkts=1) for i in range(400)]
    rule = NewPortRule(devices={"10.0.0.3": "dev-3"}, local_hosts=hosts[:4])
    rule.learn(_one_host("10.0.0.1", ["192.0.2.1"] * 25, T0 - 1000), None)  # type: ignore[arg-type]
    rule.bar({"10.0.0.4"})
    expected: dict[str, set[Any]] = {"10.0.0.1": set(rule.known["10.0.0.1"])}
    counts = {"10.0.0.1": 25}
    for f in flows:
        if f.orig_h in hosts[:3] and counts.get(f.orig_h, 0) < rule.min_flows:
            counts[f.orig_h] = counts.get(f.orig_h, 0) + 1
            expected.setdefault(f.orig_h, set()).add((PROTOCOLS.index("udp") << 16) | f.resp_p)
    for b in batches(flows, size):
        rule.learn_unjudged(b, FeatureExtractor().transform(b))
    assert rule.flows == counts and rule.known == expected
