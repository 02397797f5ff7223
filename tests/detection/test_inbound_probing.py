"""Probing and password guessing against a device from the Internet (``inbound_probing``, ADR 0708).

The rule names the attacked device, counts attempts the way Zeek's scan and
SSH guessing detectors do (from the device's side), ignores traffic the
device itself sends and probing from inside the site, and its response
verifies the device without containing it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from iotguard.detection import (
    ActionKind,
    Alert,
    DetectorConfig,
    FeatureConfig,
    FeatureExtractor,
    FlowBatch,
    InboundProbeRule,
    MonitorConfig,
    ResponseState,
    Severity,
    default_playbook,
    evaluate,
    evaluate_flows,
    feature_names,
    flow_rules,
    parse_conn_log,
    plan,
)
from iotguard.detection.flows import FAILED_STATE, RESET_STATE
from iotguard.detection.inbound import window_equivalent
from iotguard.detection.response import DeviceView, FleetView
from iotguard.hub.services.detection import RISK_HALF_LIFE_S, RISK_WEIGHT
from iotguard.sim import traffic

from .conftest import T0, Trained, batches, through_stored_rows

GUESSER = "198.41.0.4"  # a public address (a root name server's, standing in for any Internet host)


def _run(t: Trained, scenario: traffic.Scenario, seed: int = 11) -> list[Alert]:
    span = scenario.flows[-1].ts - scenario.flows[0].ts
    background = traffic.benign_traffic(t.fleet, scenario.flows[0].ts - 60, span + 120, seed=seed)
    return [a for b in batches(background.merged(scenario).flows) for a in t.detector.process(b)]


def _probing(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.detector == "inbound_probing"]


def test_device_swept_by_internet_scanners_is_alerted_on_the_device(fresh: Trained) -> None:
    """Check for a sweep: new Internet sources trying the device's telnet, SMB, adb ... ports, refused or unanswered."""
    victim = fresh.fleet[0]
    alerts = _probing(_run(fresh, traffic.external_probing(victim, fresh.start + 60, 600, rate=0.5)))
    assert alerts and {a.device for a in alerts} == {victim.device_id}
    first = dict(alerts[0].evidence)
    assert alerts[0].severity is Severity.LOW and first["address"] == victim.address
    assert int(first["sources"]) >= 10 and int(first["failed_attempts"]) > 0


def test_port_scan_of_a_device_by_one_source_is_alerted(fresh: Trained) -> None:
    victim = fresh.fleet[1]
    scan = traffic.external_probing(victim, fresh.start + 60, 60, rate=1e-6, sweep_ports=40)
    alerts = _probing(_run(fresh, scan))
    assert [a.device for a in alerts] == [victim.device_id]
    assert dict(alerts[0].evidence)["sources"] == 1 and int(dict(alerts[0].evidence)["ports"]) >= 15


def test_telnet_password_guessing_from_the_internet_is_alerted(fresh: Trained) -> None:
    """Check for credential guessing against the device itself: established telnet logins, none refused."""
    victim = fresh.fleet[2]
    alerts = _probing(_run(fresh, traffic.telnet_guessing(victim, GUESSER, fresh.start + 60, attempts=60)))
    assert [a.device for a in alerts] == [victim.device_id]
    ev = dict(alerts[0].evidence)
    assert ev["source_sample"] == GUESSER and ev["login_attempts"] == ev["flows"] and ev["failed_attempts"] == 0


@pytest.mark.parametrize(("per_5_min", "alerted"), [(60, True), (8, False)])
def test_sweep_threshold_is_zeek_s_25_sources_in_5_minutes(fresh: Trained, per_5_min: int, alerted: bool) -> None:
    """A steady 60 new sources per 5 minutes fires; 8 (which a 600 s damped count alone would let reach 25) does not."""
    scenario = traffic.external_probing(fresh.fleet[0], fresh.start + 60, 1800, rate=per_5_min / 300.0, seed=21)
    assert bool(_probing(_run(fresh, scenario))) is alerted


def test_slow_guessing_below_zeek_s_limit_is_not_alerted(fresh: Trained) -> None:
    """15 telnet logins spread over 30 minutes (Zeek's SSH guesser needs 30) raise nothing."""
    scenario = traffic.telnet_guessing(fresh.fleet[0], GUESSER, fresh.start + 60, attempts=15, rate=1 / 120)
    assert not _probing(_run(fresh, scenario))


def test_the_device_s_own_scanning_and_benign_traffic_are_not_inbound_probing(fresh: Trained) -> None:
    alerts = _run(fresh, traffic.mirai_scan(fresh.fleet[0], fresh.start + 60, 30))
    alerts += [a for b in batches(traffic.benign_traffic(fresh.fleet, fresh.start + 200, 3600, seed=7).flows)
               for a in fresh.detector.process(b)]
    assert not _probing(alerts)


def test_probing_from_inside_the_site_is_not_inbound_probing(fresh: Trained) -> None:
    """The same guessing from a private address (a LAN peer, the hub) is not an attack from outside."""
    scenario = traffic.telnet_guessing(fresh.fleet[0], "10.99.0.7", fresh.start + 60, attempts=60)
    assert not _probing(_run(fresh, scenario))
    rule = InboundProbeRule(feature_names(), devices={fresh.fleet[1].address: fresh.fleet[1].device_id})
    assert rule.devices  # a fleet device is never the outsider, whatever its address


def test_thresholds_are_the_window_counts_seen_through_the_damping() -> None:
    assert window_equivalent(25, 300, 60) == pytest.approx(25 * 60 / np.log(2) / 300 * (1 - 2 ** -5), rel=1e-12)
    assert window_equivalent(30, 1e-6, 600) == pytest.approx(30, rel=1e-6)  # a burst keeps its count
    with pytest.raises(Exception, match="lacks"):
        InboundProbeRule(feature_names(FeatureConfig(half_lives_s=(10.0, 600.0))))


def test_hub_runs_the_rule_and_the_evaluation_grades_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that the graded detector includes the rule: without it, the guessing flows go unflagged."""
    assert "inbound_probing" in {r.name for r in flow_rules(DetectorConfig(), feature_names())}
    fleet = traffic.make_fleet(per_model=2, segments=1)
    log = traffic.benign_traffic(fleet, T0, 3 * 3600, seed=31).merged(
        traffic.telnet_guessing(fleet[0], GUESSER, T0 + 2.5 * 3600, attempts=120, rate=0.2))
    labels = np.array(["Malicious" if m else "Benign" for m in log.malicious])
    flows = FlowBatch.from_flows(log.flows)
    with_rule = evaluate_flows(flows, labels)
    monkeypatch.setattr(evaluate, "flow_rules", lambda *a, **k: [r for r in flow_rules(*a, **k)
                                                                  if r.name != "inbound_probing"])
    without = evaluate_flows(flows, labels)
    assert with_rule.rule_flagged_malicious - without.rule_flagged_malicious >= with_rule.scored_malicious // 2
    assert with_rule.rule_flagged - without.rule_flagged == (with_rule.rule_flagged_malicious
                                                             - without.rule_flagged_malicious)  # no benign flow
    assert with_rule.tpr_at_1pct_fpr >= without.tpr_at_1pct_fpr


def test_default_playbook_verifies_a_probed_device_and_never_contains_it() -> None:
    alert = Alert.create("d1", "inbound_probing", 2.0, Severity.LOW, (1e9, 1e9 + 60), {"address": "10.0.0.9"})
    fleet = FleetView({"d1": DeviceView("d1", "seg-0", "thermo", False)})
    now = datetime(2026, 12, 2, tzinfo=UTC)
    kinds = {a.kind for a in plan([alert], default_playbook(), fleet, ResponseState(), now)}
    assert kinds == {ActionKind.REATTEST}


def test_an_outsider_probing_for_a_day_cannot_push_a_device_to_the_containment_risk() -> None:
    """Check that probing is no lever to quarantine a device: its alerts, as often as the rule re-alerts, keep the
    risk the policy reads (severity weight halved every hour, summed) at step-up level (>= 70), below 90."""
    realert = DetectorConfig().realert_s
    ages = np.arange(0.0, 24 * 3600.0, realert)
    risk = float(np.sum(RISK_WEIGHT[InboundProbeRule.severity] * 0.5 ** (ages / RISK_HALF_LIFE_S)))
    assert 70 <= round(risk) < 90


def test_probing_through_stored_host_rows_alerts_as_one_detector() -> None:
    """The rule reads only per-host state the hub shares between processes, and its re-alert time is stored too."""
    sims = traffic.make_fleet(per_model=1, segments=1)[:3]
    flows = traffic.benign_traffic(sims, T0, 2400.0).merged(
        traffic.external_probing(sims[0], T0 + 2410.0, 900.0, rate=0.5)).merged(
        traffic.telnet_guessing(sims[1], GUESSER, T0 + 2420.0, attempts=60)).flows
    whole = FlowBatch.from_flows(flows)
    split = [whole.take(slice(i, i + 97)) for i in range(0, len(whole), 97)]
    config = MonitorConfig(DetectorConfig(features=FeatureConfig(compiled=False)), learn_flows=300, learn_s=0.0)
    alerts, _ = through_stored_rows(config, {d.address: d.device_id for d in sims}, split)
    seen = _probing(alerts)
    assert {a.device for a in seen} == {sims[0].device_id, sims[1].device_id}


def test_zeek_s_local_marks_make_a_publicly_addressed_device_a_target() -> None:
    """A device on a public address (a university network, say) is inside the site when Zeek says so."""
    log = parse_conn_log(b"#separator \\x09\n#fields\tts\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\t"
                         b"conn_state\tlocal_orig\tlocal_resp\n"
                         b"1.0\t193.201.9.232\t46563\t147.32.81.167\t23\ttcp\tS0\tF\tT\n"
                         b"2.0\t147.32.81.167\t5000\t40.74.108.123\t443\ttcp\tSF\tT\tF\n")
    assert log.local_hosts == {"147.32.81.167"}
    device = traffic.SimDevice("pub-0", "thermo", "147.32.81.167", "seg-0")
    flows = FlowBatch.from_flows(traffic.telnet_guessing(device, GUESSER, T0, attempts=60).flows)
    features = FeatureExtractor().transform(flows)
    assert not InboundProbeRule(feature_names()).hits(flows, features).any()
    assert InboundProbeRule(feature_names(), local_hosts=log.local_hosts).hits(flows, features).sum() > 30


def test_the_compiled_test_selects_the_rows_of_the_numpy_reference() -> None:
    """Random attempts and counts around every threshold: the one-pass kernel and the NumPy reference agree."""
    kernel = pytest.importorskip("iotguard.detection._compiled_rules")
    from iotguard.detection import inbound
    from iotguard.detection.features import FeatureMatrix
    from iotguard.detection.flows import CONN_STATES, PROTOCOLS

    names = feature_names(FeatureConfig())
    rule = InboundProbeRule(names)
    rng = np.random.default_rng(5)
    n = 4096
    ports = np.array([22, 23, 80, 443, 2323, 5555, 8080, 0, 65535])
    batch = FlowBatch(
        ts=np.arange(n, dtype=np.float64), orig_h=np.array([GUESSER] * n), resp_h=np.array(["10.0.0.2"] * n),
        orig_p=rng.integers(1024, 65536, n), resp_p=rng.choice(ports, n),
        proto=rng.integers(0, len(PROTOCOLS), n), duration=np.zeros(n),
        orig_bytes=rng.choice([0.0, 0.0, 40.0], n), resp_bytes=rng.choice([0.0, 0.0, 12.0], n),
        orig_pkts=np.ones(n), resp_pkts=np.ones(n), state=rng.integers(0, len(CONN_STATES), n),
        service_known=np.zeros(n, dtype=np.int64))
    values = rng.normal(0.0, 0.3, (n, len(names)))
    # Each count column near its threshold (log1p scale): below, at and above in about equal parts.
    for j, t in zip(rule._index, rule._log_thresholds, strict=True):
        values[:, j] = (t if np.isfinite(t) else 0.5) * rng.uniform(0.8, 1.25, n)
    values[:, rule._index[1]] = rng.uniform(0.3, 1.0, n)  # shares of new sources
    values[:, rule._index[4]] = rng.uniform(0.3, 1.0, n)
    features = FeatureMatrix(values, batch.orig_h, np.zeros(n, np.int64), np.zeros(n, np.int64))
    want_rows, want_login = rule._candidates_numpy(batch, features)
    rows, login = kernel.inbound_candidates(batch.state, batch.orig_bytes, batch.resp_bytes, batch.resp_p,
                                            batch.proto, features.values, rule._index, rule._log_thresholds,
                                            FAILED_STATE, RESET_STATE, inbound._LOGIN, inbound._TCP,
                                            rule.min_sources)
    assert 200 < want_rows.shape[0] < n // 2  # every branch is exercised, and not everything is a hit
    assert rows.tolist() == want_rows.tolist()
    assert login.tolist() == want_login.tolist()
    assert rule.hits(batch, features).sum() == want_rows.shape[0]  # all of them from outside to a local address
