"""A device's health metrics: strict report format, and a per-device baseline that notices a compromise."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from typing import Any

import cbor2
import pytest

from iotguard.detection import HealthDetector, HealthReport, decode_health_report, encode_health_report
from iotguard.errors import MalformedError

T0 = 1_767_225_600
NORMAL = hashlib.sha256(b"/usr/bin/iotguard-agent\n/sbin/init").digest()


def _normal(i: int, rng: random.Random) -> HealthReport:
    return HealthReport(T0 + 60 * i, rng.randint(20, 60), rng.randint(5000, 5400), NORMAL, (8883,),
                        (("10.0.0.1:8883", rng.randint(4000, 6000)), ("10.0.0.53:53", rng.randint(100, 300))),
                        rng.randint(10, 14), 0)


def _learned(device: str = "dev-1", n: int = 20) -> tuple[HealthDetector, random.Random]:
    detector, rng = HealthDetector(), random.Random(7)
    for i in range(n):
        assert detector.observe(device, _normal(i, rng)) == []
    return detector, rng


def test_health_report_round_trips() -> None:
    report = _normal(0, random.Random(1))
    assert decode_health_report(encode_health_report(report)) == report


def _body(**changes: Any) -> bytes:
    body = dict(cbor2.loads(encode_health_report(_normal(0, random.Random(1)))))
    body.update(changes)
    return bytes(cbor2.dumps(body, canonical=True))


@pytest.mark.parametrize(("data", "code"), [
    (b"\xa0" * 9000, "health_too_large"),
    (b"\xff", "health_not_cbor"),
    (cbor2.dumps({"v": 1}), "health_bad_keys"),
    (_body(v=2), "health_version"),
    (_body(cpu_permille=-1), "health_bad_value"),
    (_body(cpu_permille=10**9), "health_bad_value"),
    (_body(process_digest=b"short"), "health_bad_value"),
    (_body(listening=[8883, 22]), "health_bad_ports"),
    (_body(listening=[0]), "health_bad_ports"),
    (_body(listening=list(range(1, 100))), "health_bad_ports"),
    (_body(outbound=[["a:1", 1], ["a:1", 2]]), "health_bad_outbound"),
    (_body(outbound=[["a:1", -5]]), "health_bad_outbound"),
    (_body(messages=True), "health_bad_value"),
])
def test_malformed_health_report_refused_with_its_reason(data: bytes, code: str) -> None:
    with pytest.raises(MalformedError) as info:
        decode_health_report(data)
    assert info.value.code == code


def test_normal_behaviour_raises_no_alert_after_learning() -> None:
    detector, rng = _learned()
    alerts = [a for i in range(20, 200) for a in detector.observe("dev-1", _normal(i, rng))]
    assert alerts == []


def test_dropped_backdoor_changes_process_set_and_opens_a_port() -> None:
    """Mirai-style infection: a new binary runs and a telnet listener appears."""
    detector, rng = _learned()
    infected = replace(_normal(20, rng), process_digest=hashlib.sha256(b"/tmp/.x/mirai").digest(),
                       listening=(23, 8883))
    alerts = {a.detector: a for a in detector.observe("dev-1", infected)}
    assert set(alerts) == {"process_change", "new_listening_port"}
    assert dict(alerts["new_listening_port"].evidence)["ports"] == "23"


def test_exfiltration_to_a_new_destination_with_a_burst_of_bytes() -> None:
    detector, rng = _learned()
    normal = _normal(20, rng)
    leaking = replace(normal, outbound=(*normal.outbound, ("198.51.100.23:443", 2_500_000)))
    found = {a.detector: a for a in detector.observe("dev-1", leaking)}
    assert set(found) == {"new_destination", "health_anomaly"}
    assert dict(found["health_anomaly"].evidence)["metric"] == "outbound_bytes"


def test_flooding_device_message_rate_is_an_anomaly() -> None:
    detector, rng = _learned()
    flooding = replace(_normal(20, rng), messages=5000, cpu_permille=950)
    assert [a.detector for a in detector.observe("dev-1", flooding)] == ["health_anomaly"]


def test_credential_guessing_against_the_device_alerts_even_while_learning() -> None:
    detector = HealthDetector()
    guessed = replace(_normal(0, random.Random(1)), auth_failures=40)
    assert [a.detector for a in detector.observe("dev-new", guessed)] == ["auth_failures"]


def test_each_device_has_its_own_baseline() -> None:
    detector, rng = _learned("dev-1")
    other = replace(_normal(0, rng), process_digest=hashlib.sha256(b"camera firmware").digest())
    assert detector.observe("dev-2", other) == []  # dev-2 is still learning its own normal
    assert detector.learning("dev-2") and not detector.learning("dev-1")


# -- the hub's own signals ----------------------------------------------------------


def test_refusal_rule_alerts_on_a_device_the_policy_keeps_denying() -> None:
    from iotguard.detection import Refusal, RefusalRule

    rule = RefusalRule()
    alerts = rule.observe([Refusal(T0 + i, "dev-1", "policy_denied", "rekey") for i in range(5)])
    assert [(a.device, a.detector) for a in alerts] == [("dev-1", "policy_denials")]
    assert rule.observe([Refusal(T0 + 10 + i, "dev-1", "policy_denied", "rekey") for i in range(5)]) == []  # quiet
    spread = [Refusal(T0 + 1000 + 30 * i, "dev-2", "policy_denied") for i in range(5)]  # 5 in 120 s: not 5 in 60 s
    assert rule.observe(spread) == []


def test_forged_requests_under_a_device_id_do_not_count_against_that_device() -> None:
    """Anyone who knows a device id can send forged or replayed requests naming it; they must not raise its
    risk (that would let an attacker contain any device by name)."""
    from iotguard.detection import Refusal, RefusalRule

    rule = RefusalRule()
    events = [Refusal(T0 + i, "victim", reason) for i in range(30) for reason in ("forged", "replay", "stale")]
    assert rule.observe(events) == []


# -- one device's state as a strict, bounded blob (kept by the hub's detector-state store) ---------------


def test_exported_state_continues_in_a_fresh_detector_exactly_as_in_the_original() -> None:
    original, rng = _learned()
    original.observe("dev-1", replace(_normal(20, rng), listening=(23, 8883)))  # throttle state travels too
    copy = HealthDetector()
    state = original.export_state("dev-1")
    assert state is not None and original.export_state("dev-2") is None
    copy.import_state("dev-1", state)
    assert copy.export_state("dev-1") == state
    for i in range(21, 30):
        report = replace(_normal(i, rng), listening=(23, 8883), process_digest=hashlib.sha256(b"x").digest())
        assert copy.observe("dev-1", report) == original.observe("dev-1", report)


def _state(**change: Any) -> bytes:
    detector, _ = _learned()
    body = cbor2.loads(detector.export_state("dev-1"))
    body.update(change)
    return bytes(cbor2.dumps(body, canonical=True))


@pytest.mark.parametrize(("data", "code"), [
    (b"\x00" * (32 * 1024 + 1), "detector_state_too_large"),
    (b"\xff\x00", "detector_state_not_cbor"),
    (bytes(cbor2.dumps({"v": 1}, canonical=True)), "detector_state_bad_keys"),
    (_state(v=2), "detector_state_version"),
    (_state(reports=-1), "detector_state_bad_value"),
    (_state(ports=[8883, 23]), "detector_state_bad_value"),
    (_state(ports=list(range(1, 66))), "detector_state_bad_value"),
    (_state(digests=[b"short"]), "detector_state_bad_value"),
    (_state(destinations=["x" * 81]), "detector_state_bad_value"),
    (_state(mean=[0.0, 1.0]), "detector_state_bad_value"),
    (_state(m2=[-1.0, 0.0, 0.0, 0.0]), "detector_state_bad_value"),
    (_state(mean=[float("nan"), 0.0, 0.0, 0.0]), "detector_state_bad_value"),
    (_state(alerted={"rm -rf": 1.0}), "detector_state_bad_value"),
    (_state(alerted={"process_change": "soon"}), "detector_state_bad_value"),
])
def test_forged_detector_state_is_refused_with_its_reason(data: bytes, code: str) -> None:
    detector = HealthDetector()
    with pytest.raises(MalformedError) as err:
        detector.import_state("dev-1", data)
    assert err.value.code == code
    assert detector.learning("dev-1") and detector.export_state("dev-1") is None


def test_detector_state_is_never_pickle() -> None:
    import pickle

    with pytest.raises(MalformedError) as err:
        HealthDetector().import_state("dev-1", pickle.dumps({"v": 1}))
    assert err.value.code in {"detector_state_not_cbor", "detector_state_bad_keys"}  # never unpickled
