"""Detectors against simulated attacks: each scenario is caught on the attacked device,
and benign traffic stays within the calibrated false-positive rate."""

from __future__ import annotations

import numpy as np

from iotguard.detection import Alert, CloneRule, CredentialGuessingRule, Severity
from iotguard.sim import traffic

from .conftest import Trained, batches

QUARANTINE_GRADE = {"scan_fanout", "beaconing", "known_bad_address", "credential_guessing", "cloned_device"}


def _run(t: Trained, scenario: traffic.Scenario, seed: int) -> list[Alert]:
    span = scenario.flows[-1].ts - scenario.flows[0].ts
    background = traffic.benign_traffic(t.fleet, scenario.flows[0].ts - 60, span + 120, seed=seed)
    alerts: list[Alert] = []
    for batch in batches(background.merged(scenario).flows):
        alerts += t.detector.process(batch)
    return alerts


def _by(alerts: list[Alert], device: str) -> set[str]:
    return {a.detector for a in alerts if a.device == device}


def test_benign_traffic_stays_below_calibrated_fpr(trained: Trained) -> None:
    later = traffic.benign_traffic(trained.fleet, trained.start, 3600, seed=5)
    scores = np.concatenate([trained.detector.score(b)[1] for b in batches(later.flows)])
    target = trained.detector.config.scorer.target_fpr
    assert (scores > 1.0).mean() <= 2 * target


def test_benign_traffic_raises_no_quarantine_grade_alert(fresh: Trained) -> None:
    later = traffic.benign_traffic(fresh.fleet, fresh.start, 3600, seed=6)
    alerts = [a for b in batches(later.flows) for a in fresh.detector.process(b)]
    assert not [a for a in alerts if a.detector in QUARANTINE_GRADE]
    assert len(alerts) <= len(fresh.fleet) // 2  # a few low-grade findings per hour at most


def test_mirai_telnet_scan_is_detected(fresh: Trained) -> None:
    victim = fresh.fleet[0]
    alerts = _run(fresh, traffic.mirai_scan(victim, fresh.start + 60, 30), seed=11)
    assert {"scan_fanout", "autoencoder"} <= _by(alerts, victim.device_id)
    learned = next(a for a in alerts if a.detector == "autoencoder")
    assert dict(learned.evidence)["features"]  # which features are furthest from the device's normal
    scan = next(a for a in alerts if a.detector == "scan_fanout")
    assert scan.severity is Severity.HIGH and dict(scan.evidence)["destinations"] > 100
    assert not [a for a in alerts if a.device != victim.device_id and a.detector in QUARANTINE_GRADE]


def test_syn_flood_is_detected(fresh: Trained) -> None:
    attacker = fresh.fleet[3]
    alerts = _run(fresh, traffic.syn_flood(attacker, "10.0.0.1", fresh.start + 60, 10), seed=12)
    assert "autoencoder" in _by(alerts, attacker.device_id)
    assert max(a.score for a in alerts if a.device == attacker.device_id) > 3.0


def test_udp_flood_is_detected(fresh: Trained) -> None:
    attacker = fresh.fleet[4]
    alerts = _run(fresh, traffic.udp_flood(attacker, "10.0.0.1", fresh.start + 60, 10), seed=13)
    assert {"autoencoder", "scan_fanout"} <= _by(alerts, attacker.device_id)


def test_cnc_beaconing_is_detected(fresh: Trained) -> None:
    bot = fresh.fleet[5]
    alerts = _run(fresh, traffic.cnc_beacon(bot, fresh.start + 60, 600, server="192.0.2.77"), seed=14)
    beacon = [a for a in alerts if a.device == bot.device_id and a.detector == "beaconing"]
    assert beacon and dict(beacon[0].evidence)["peer"] == "192.0.2.77"
    assert 19.0 < dict(beacon[0].evidence)["period_s"] < 21.0


def test_traffic_to_known_bad_address_is_detected(fresh: Trained) -> None:
    bot = fresh.fleet[6]
    alerts = _run(fresh, traffic.cnc_beacon(bot, fresh.start + 60, 60, server="203.0.113.66"), seed=15)
    bad = [a for a in alerts if a.detector == "known_bad_address"]
    assert bad and bad[0].device == bot.device_id and bad[0].severity is Severity.CRITICAL


def test_slow_exfiltration_is_detected(fresh: Trained) -> None:
    mole = fresh.fleet[7]
    alerts = _run(fresh, traffic.slow_exfiltration(mole, fresh.start + 60, 1800), seed=16)
    assert "autoencoder" in _by(alerts, mole.device_id)


def test_cloned_device_is_detected() -> None:
    device = traffic.make_fleet(1, 1)[0]
    rule = CloneRule()
    honest = traffic.cloned_device(device, device.address, 0.0, 300)  # one place only
    assert rule.observe(honest.sessions) == []
    alerts = CloneRule().observe(traffic.cloned_device(device, "192.0.2.50", 0.0, 300).sessions)
    assert len(alerts) == 1 and alerts[0].device == device.device_id
    assert "192.0.2.50" in dict(alerts[0].evidence)["addresses"]


def test_default_credential_guessing_is_detected() -> None:
    rule = CredentialGuessingRule(devices={"10.20.1.99": "sim-meter-1"})
    alerts = rule.observe(traffic.credential_guessing("10.20.1.99", 0.0, attempts=40).auth_failures)
    assert len(alerts) == 1 and alerts[0].device == "sim-meter-1"
    assert dict(alerts[0].evidence)["principals"] >= 5
    # an operator mistyping a password a few times is not an attack
    slow = [f for f in traffic.credential_guessing("10.0.0.5", 0.0, attempts=9).auth_failures]
    assert CredentialGuessingRule().observe(slow) == []


def test_simulated_fleet_addresses_are_valid_and_unique() -> None:
    import ipaddress

    fleet = traffic.make_fleet(per_model=300, segments=4)
    addresses = [ipaddress.ip_address(d.address) for d in fleet]
    assert len(set(addresses)) == len(fleet) == 1500
    assert {d.segment for d in fleet} == {"seg-0", "seg-1", "seg-2", "seg-3"}
