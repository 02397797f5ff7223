"""The new-port and beaconing baselines, vectorised per batch, give what a flow-by-flow pass gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from iotguard.detection import Flow, FlowBatch, rules
from iotguard.detection.features import FeatureExtractor
from iotguard.detection.rules import BeaconRule, NewPortRule
from iotguard.sim import traffic

from .conftest import T0, batches


class _FlowByFlow:
    """The rules' baseline as it was before vectorising: one Python step per flow."""

    def __init__(self, key: Any, cap: int, min_flows: int) -> None:
        self.key, self.cap, self.min_flows = key, cap, min_flows
        self.known: dict[str, set[Any]] = {}
        self.flows: dict[str, int] = {}

    def learn(self, batch: FlowBatch) -> None:
        for i in range(len(batch)):
            host = str(batch.orig_h[i])
            self.flows[host] = self.flows.get(host, 0) + 1
            known = self.known.setdefault(host, set())
            if len(known) < self.cap:
                known.add(self.key(batch, i))

    def unknown(self, batch: FlowBatch) -> np.ndarray:
        out = np.zeros(len(batch), dtype=bool)
        for i in range(len(batch)):
            host = str(batch.orig_h[i])
            if self.flows.get(host, 0) >= self.min_flows:
                out[i] = self.key(batch, i) not in self.known[host]
        return out


def _port(batch: FlowBatch, i: int) -> int:
    return (int(batch.proto[i]) << 16) | int(batch.resp_p[i])


def _peer(batch: FlowBatch, i: int) -> str:
    return str(batch.resp_h[i])


@pytest.mark.parametrize("few_hosts", [0, 1000])  # hosts found by binary search, or by one comparison each
@pytest.mark.parametrize("cap", [3, 1024])
@pytest.mark.parametrize(("rule_kind", "key"), [("port", _port), ("beacon", _peer)])
def test_vectorised_baseline_equals_flow_by_flow(cap: int, rule_kind: str, key: Any, few_hosts: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "_FEW_HOSTS", few_hosts)
    fleet = traffic.make_fleet(per_model=2, segments=2)
    learn = batches(traffic.benign_traffic(fleet, T0, 1800.0, seed=31).flows)
    later = traffic.benign_traffic(fleet, T0 + 1800.0, 600.0, seed=32).merged(
        traffic.mirai_scan(fleet[1], T0 + 1900.0, 120.0, rate=5.0, seed=33))
    names = FeatureExtractor().names
    rule = NewPortRule() if rule_kind == "port" else BeaconRule(names)
    rule.max_keys_per_host = cap
    reference = _FlowByFlow(key, cap, rule.min_flows)
    for b in learn:
        rule.learn(b, None)  # type: ignore[arg-type]  # the baselines read no features
        reference.learn(b)
    assert rule.flows == reference.flows
    assert rule.known == reference.known
    flagged = 0
    for b in batches(later.flows):
        got = rule._unknown(b)
        assert np.array_equal(got, reference.unknown(b))
        flagged += int(got.sum())
    assert flagged > 0  # the scan's new ports and peers are in there
    rule.forget({fleet[1].address})
    assert fleet[1].address not in rule.known


def _one_host_batch(host: str, peers: list[str], t0: float) -> FlowBatch:
    return FlowBatch.from_flows([Flow(ts=t0 + i, orig_h=host, orig_p=40000 + i, resp_h=peer, resp_p=443, proto="tcp",
                                      duration=0.1, orig_bytes=100, resp_bytes=200, conn_state="SF", orig_pkts=2,
                                      resp_pkts=2) for i, peer in enumerate(peers)])


def test_known_peer_longer_than_a_batch_s_addresses_stays_known() -> None:
    """A batch of short addresses must not cut the cached baseline: a known peer judged later stays known."""
    rule = BeaconRule(FeatureExtractor().names)
    rule.learn(_one_host_batch("10.0.0.2", ["192.168.100.200"] * 10 + ["8.8.8.8"] * 10, T0), None)  # type: ignore[arg-type]
    assert rule._unknown(_one_host_batch("10.0.0.2", ["8.8.8.8"], T0 + 100)).tolist() == [False]
    assert rule._unknown(_one_host_batch("10.0.0.2", ["192.168.100.200"], T0 + 200)).tolist() == [False]


def test_timer_driven_multicast_reports_are_not_beaconing() -> None:
    """MLD reports to a link-local group every 20 s are plumbing, not a C&C check-in; the same to one peer is."""
    names = FeatureExtractor().names
    for peer, beacon in (("ff02::1:ff2b:5398", False), ("224.0.0.251", False), ("203.0.113.66", True)):
        extractor, rule = FeatureExtractor(), BeaconRule(names)
        batch = FlowBatch.from_flows([Flow(ts=T0 + 20.0 * i, orig_h="fe80::1" if ":" in peer else "10.0.0.2",
                                           orig_p=0, resp_h=peer, resp_p=130, proto="icmp", duration=0.0,
                                           orig_bytes=24, resp_bytes=0, conn_state="OTH", orig_pkts=1, resp_pkts=0)
                                      for i in range(30)])
        assert rule.hits(batch, extractor.transform(batch)).any() == beacon, peer


def _burst(states: list[str]) -> FlowBatch:
    """One host opening a new HTTPS destination every 0.2 s, each flow in the given Zeek state."""
    return FlowBatch.from_flows([
        Flow(ts=T0 + 0.2 * i, orig_h="10.0.0.9", orig_p=40000 + i, resp_h=f"198.51.100.{i + 1}", resp_p=443,
             proto="tcp", duration=0.5 if s == "SF" else 0.0, orig_bytes=600 if s == "SF" else 0,
             resp_bytes=4000 if s == "SF" else 0, conn_state=s, orig_pkts=6 if s == "SF" else 1,
             resp_pkts=(6 if s == "SF" else 1 if s == "REJ" else 0))
        for i, s in enumerate(states)])


def test_a_burst_of_answered_connections_is_not_a_scan() -> None:
    """A browser opening forty hosts, all answered, is not a scan; the same fan-out of unanswered or refused
    attempts is, and only the failed flows are its evidence (Zeek's scan policy counts only failed attempts)."""
    names = FeatureExtractor().names
    answered = _burst(["SF"] * 40)
    rule = rules.ScanFanOutRule(names)
    assert not rule.hits(answered, FeatureExtractor().transform(answered)).any()
    assert rule.evaluate(answered, FeatureExtractor().transform(answered)) == []
    mixed = _burst(["S0", "REJ", "SF", "S0"] * 10)
    hit = rules.ScanFanOutRule(names).hits(mixed, FeatureExtractor().transform(mixed))
    assert hit.any()
    failed = np.array(["S0", "REJ", "SF", "S0"] * 10) != "SF"
    assert not (hit & ~failed).any()
    assert hit[-10:].sum() == failed[-10:].sum()  # past the count's threshold every failed attempt holds
    alerts = rules.ScanFanOutRule(names).evaluate(mixed, FeatureExtractor().transform(mixed))
    assert [a.detector for a in alerts] == ["scan_fanout"] and dict(alerts[0].evidence)["flows"] == int(hit.sum())
