"""A sensor's flows through the device plane into the hub's detection and response."""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest

from iotguard.agent import Agent
from iotguard.detection import FlowBatch, encode_flow_report, split_for_reports
from iotguard.hub.services.sensing import ADDRESS_INVENTORY_FILE, SENSOR_MODEL
from iotguard.policy import AccessRequest
from iotguard.sim import traffic
from tests.hub.conftest import HubParts

T0 = 1_767_225_600.0


def _may_publish(hub: HubParts, device: str) -> bool:
    return hub.services.posture.engine.decide(
        AccessRequest.device(device, "publish", f"iotguard/default/{device}/telemetry")).allowed


def _report(agent: Agent, batch: FlowBatch) -> list[dict[str, object]]:
    answers = []
    for report in split_for_reports(batch):
        r = agent.signed_request("report_flows", "/v1/flows", {"flows": report})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers


def _fleet(hub: HubParts) -> list[traffic.SimDevice]:
    sims = traffic.make_fleet(per_model=1, segments=1)[:3]
    for d in sims:
        hub.agent(d.device_id, model=d.model)
    inventory = "".join(f"{d.address} {d.device_id}\n" for d in sims)
    (Path(hub.cfg.data_dir) / ADDRESS_INVENTORY_FILE).write_text("# test fleet\n" + inventory)
    return sims


def test_sensor_reports_a_scanning_device_which_the_playbook_quarantines(hub: HubParts) -> None:
    sims = _fleet(hub)
    sensor = hub.agent("sensor-1", model=SENSOR_MODEL)
    benign = FlowBatch.from_flows(traffic.benign_traffic(sims, T0, 900.0).flows)
    answers = _report(sensor, benign)
    assert sum(int(a["accepted"]) for a in answers) == len(benign)  # type: ignore[call-overload]
    assert sum(int(a["alerts"]) for a in answers) == 0  # type: ignore[call-overload]
    assert hub.services.detection.alerts() == []
    scan = FlowBatch.from_flows(traffic.mirai_scan(sims[0], T0 + 950.0, 60.0).flows)
    _report(sensor, scan)
    alerts = hub.services.detection.alerts()
    assert {(a.alert.device, a.alert.detector) for a in alerts} == {(sims[0].device_id, "scan_fanout")}
    assert not _may_publish(hub, sims[0].device_id)
    assert all(_may_publish(hub, d.device_id) for d in sims[1:])  # the others keep flowing
    assert hub.services.flows.flows_accepted == len(benign) + len(scan)


def test_forged_flows_an_ordinary_device_cannot_report_flows(hub: HubParts) -> None:
    """A compromised thermostat must not feed the detectors flows that would quarantine its neighbours."""
    sims = _fleet(hub)
    thermo = hub.agent("thermo-x", model="thermo")
    scan = FlowBatch.from_flows(traffic.mirai_scan(sims[1], T0, 60.0).flows[:200])
    r = thermo.signed_request("report_flows", "/v1/flows", {"flows": encode_flow_report(scan)})
    assert r.status_code == 403 and r.json()["error"] == "policy_denied"
    assert hub.services.detection.alerts() == []
    assert _may_publish(hub, sims[1].device_id)


def test_quarantined_sensor_cannot_report_flows(hub: HubParts) -> None:
    sims = _fleet(hub)
    sensor = hub.agent("sensor-1", model=SENSOR_MODEL)
    hub.services.posture.quarantine("sensor-1", actor="olga", reason="test")
    flows = FlowBatch.from_flows(traffic.benign_traffic(sims, T0, 60.0).flows)
    r = sensor.signed_request("report_flows", "/v1/flows", {"flows": encode_flow_report(flows)})
    assert r.status_code == 403


def test_malformed_flow_report_refused_with_its_reason(hub: HubParts) -> None:
    _fleet(hub)
    sensor = hub.agent("sensor-1", model=SENSOR_MODEL)
    r = sensor.signed_request("report_flows", "/v1/flows", {"flows": bytes(cbor2.dumps({"v": 1}))})
    assert r.status_code == 400 and r.json()["error"] == "malformed"
    assert hub.services.flows.refused == {"flow_report_bad_keys": 1}


def test_replayed_flow_report_refused(hub: HubParts) -> None:
    sims = _fleet(hub)
    sensor = hub.agent("sensor-1", model=SENSOR_MODEL)
    flows = FlowBatch.from_flows(traffic.benign_traffic(sims, T0, 60.0).flows)
    wire = sensor._signed("report_flows", {"flows": encode_flow_report(flows)})[0]
    assert hub.client.post("/v1/flows", json=wire).status_code == 200
    assert hub.client.post("/v1/flows", json=wire).status_code == 409
    assert hub.services.flows.flows_accepted == len(flows)


def test_flows_from_addresses_outside_the_inventory_alert_but_quarantine_nobody(hub: HubParts) -> None:
    sims = _fleet(hub)
    sensor = hub.agent("sensor-1", model=SENSOR_MODEL)
    stranger = traffic.SimDevice("not-enrolled", "thermo", "10.99.0.7", "seg-0")
    _report(sensor, FlowBatch.from_flows(traffic.mirai_scan(stranger, T0, 60.0).flows))
    [alert] = hub.services.detection.alerts()
    assert alert.alert.device == "10.99.0.7"
    actions = hub.services.detection.alert(alert.alert_id)[1]
    assert {a.reason for a in actions if a.kind == "quarantine"} == {"not_a_device"}
    assert all(_may_publish(hub, d.device_id) for d in sims)


def test_device_health_reports_build_a_baseline_and_a_dropped_backdoor_raises_risk(hub: HubParts) -> None:
    import hashlib
    from dataclasses import replace

    from iotguard.detection import HealthReport, encode_health_report

    agent = hub.agent("dev-h", model="thermo")
    normal = HealthReport(int(T0), 40, 5200, hashlib.sha256(b"agent").digest(), (8883,),
                          (("10.0.0.1:8883", 5000),), 12, 0)
    for i in range(10):
        r = agent.signed_request("report_health", "/v1/device-health",
                                 {"metrics": encode_health_report(replace(normal, ts=int(T0) + 60 * i))})
        assert r.status_code == 200 and r.json()["alerts"] == 0
    infected = replace(normal, ts=int(T0) + 660, process_digest=hashlib.sha256(b"mirai").digest(),
                       listening=(23, 8883))
    r = agent.signed_request("report_health", "/v1/device-health", {"metrics": encode_health_report(infected)})
    assert r.status_code == 200 and r.json()["alerts"] == 2
    assert {a.alert.detector for a in hub.services.detection.alerts(device_id="dev-h")} == {
        "process_change", "new_listening_port"}
    assert hub.services.posture.posture.require("dev-h").risk_score == 90  # two high alerts: contained by policy
    assert not _may_publish(hub, "dev-h")


def test_lateral_health_report_about_another_device_is_refused(hub: HubParts) -> None:
    """A device signs a report naming another device id: the signature is checked against the claimed device."""
    a = hub.agent("dev-a", model="thermo")
    hub.agent("dev-b", model="thermo")
    from iotguard.identity import sign_device_request

    forged = sign_device_request("report_health", "dev-b", {"metrics": b"\xa0"}, now=hub.services.clock.now(),
                                 sign=lambda m: a.keystore.sign("identity", m))
    r = hub.client.post("/v1/device-health", json=forged.wire)
    assert r.status_code == 401 and r.json()["error"] == "forged"


def test_malformed_health_report_refused_with_its_reason(hub: HubParts) -> None:
    agent = hub.agent("dev-h", model="thermo")
    r = agent.signed_request("report_health", "/v1/device-health", {"metrics": b"\xa1\x61v\x02"})
    assert r.status_code == 400 and r.json()["error"] == "malformed"
    assert hub.services.health.refused == {"health_bad_keys": 1}


def test_device_the_policy_keeps_denying_raises_a_policy_denials_alert(hub: HubParts) -> None:
    """A thermostat in good standing keeps trying what no thermostat may (reporting flows): an alert."""
    agent = hub.agent("dev-p", model="thermo")
    for _ in range(5):
        r = agent.signed_request("report_flows", "/v1/flows", {"flows": b"\xa0"})
        assert r.status_code == 403
    assert [a.alert.detector for a in hub.services.detection.alerts(device_id="dev-p")] == ["policy_denials"]


def test_denials_of_a_quarantined_device_are_not_counted_against_it(hub: HubParts) -> None:
    """A quarantined device keeps asking for new keys: containment working, not new behaviour (counting it
    would push its risk to containment again after an operator releases it)."""
    agent = hub.agent("dev-q", model="thermo")
    hub.services.posture.quarantine("dev-q", actor="olga", reason="test")
    for _ in range(10):
        r = agent.signed_request("renew", "/v1/renew", {"transport_public_key": bytes(range(32))})
        assert r.status_code == 403
    assert hub.services.detection.alerts(device_id="dev-q") == []


def test_forged_requests_naming_a_device_do_not_raise_its_risk(hub: HubParts) -> None:
    hub.agent("victim", model="thermo")
    attacker = hub.agent("attacker", model="thermo")
    from iotguard.identity import sign_device_request

    for _ in range(10):
        forged = sign_device_request("renew", "victim", {"transport_public_key": bytes(range(32))},
                                     now=hub.services.clock.now(), sign=lambda m: attacker.keystore.sign("identity", m))
        assert hub.client.post("/v1/renew", json=forged.wire).status_code in (401, 429)
    assert hub.services.detection.alerts(device_id="victim") == []
    assert hub.services.posture.posture.require("victim").risk_score == 0


def test_sensor_cli_sends_a_captures_flows_and_the_scan_in_it_is_caught(
        hub: HubParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``iotguard sensor --pcap``: a capture of a telnet SYN scan from a fleet device becomes a scan alert."""
    from iotguard.cli.main import main
    from tests.detection.test_pcap import S, _capture, _tcp

    sims = _fleet(hub)
    sensor = hub.agent("sensor-1", model=SENSOR_MODEL)
    monkeypatch.setattr("iotguard.agent.Agent", lambda _cfg, _device_id: sensor)
    packets = [(T0 + 0.05 * i, _tcp(sims[0].address, 40000 + i, f"198.18.{i // 250}.{i % 250 + 1}", 23, S))
               for i in range(300)]
    capture = tmp_path / "scan.pcap"
    capture.write_bytes(_capture(packets))
    assert main(["sensor", "--device-id", "sensor-1", "--pcap", str(capture)]) == 0
    assert "sent 300 flows from 300 packets" in capsys.readouterr().out
    assert {(a.alert.device, a.alert.detector) for a in hub.services.detection.alerts()} == {
        (sims[0].device_id, "scan_fanout")}


def test_fleet_wide_firmware_change_seen_by_the_sensor_quarantines_no_more_than_the_blast_radius(
        hub: HubParts) -> None:
    """Every thermostat updates and changes behaviour together. Even under a playbook that quarantines on any
    anomaly, the hub contains at most the blast radius (10 % of the segment, at least 1) automatically."""
    from iotguard.hub.services.audit import OutboxAuditSink
    from iotguard.hub.services.detection import activate_playbook
    from tests.detection.test_false_positive_guard import AGGRESSIVE

    sims = traffic.make_fleet(per_model=10, segments=1, models=("thermo", "meter"))
    for d in sims:
        hub.agent(d.device_id, model=d.model)
    (Path(hub.cfg.data_dir) / ADDRESS_INVENTORY_FILE).write_text("".join(f"{d.address} {d.device_id}\n" for d in sims))
    activate_playbook(Path(hub.cfg.data_dir), AGGRESSIVE, actor="olga",
                      audit=OutboxAuditSink(hub.services.outbox, hub.services.clock), now=hub.services.clock.now())
    sensor = hub.agent("sensor-1", model=SENSOR_MODEL)
    # The learning window: two hours of flow time by default (ADR 0710).
    _report(sensor, FlowBatch.from_flows(traffic.benign_traffic(sims, T0, 2.1 * 3600.0).flows))
    assert not hub.services.flows._current().learning
    _report(sensor, FlowBatch.from_flows(traffic.firmware_change(sims, "thermo", T0 + 2.1 * 3600.0, 1800.0).flows))
    alerted = {a.alert.device for a in hub.services.detection.alerts()}
    quarantined = [d.device_id for d in sims if hub.services.posture.posture.require(d.device_id).quarantined]
    assert len(alerted) >= 5  # the change is seen ...
    assert 1 <= len(quarantined) <= 2  # ... but 20 devices x 10 % = 2 at most are contained automatically
    waiting = [a for a in hub.services.detection.awaiting_approval() if a.reason == "blast_radius"]
    assert {a.device_id for a in waiting} >= alerted - set(quarantined)  # the rest wait for an operator


def test_device_whose_readings_the_policy_keeps_refusing_raises_a_policy_denials_alert(hub: HubParts) -> None:
    """Ingest's rejections are detection input too: a device of a model without a data contract publishes
    readings the hub must refuse; after five refusals within a minute it is alerted on."""
    from iotguard.hub.ingest import Incoming
    from iotguard.wire import Reading, encode_reading

    agent = hub.agent("dev-r", model="no-contract-model")
    for i in range(5):
        _s, env = agent.sealer.seal(encode_reading(Reading(1_700_000_000_000 + i, {"x": 1.0}, "research")))
        assert hub.processor.process([Incoming(agent.sealer.topic, env)]).rejected == {"policy_denied": 1}
    assert [a.alert.detector for a in hub.services.detection.alerts(device_id="dev-r")] == ["policy_denials"]


def test_the_learning_window_is_the_operators_setting(tmp_path: Path) -> None:
    """``hub.detection_learn_flows`` / ``hub.detection_learn_s`` reach the flow monitor (ADR 0710)."""
    from tests.hub.conftest import make_hub

    parts = make_hub(tmp_path, detection_learn_flows=500, detection_learn_s=86400.0)
    sims = traffic.make_fleet(per_model=1, segments=1)
    (Path(parts.cfg.data_dir) / ADDRESS_INVENTORY_FILE).write_text("".join(f"{d.address} {d.device_id}\n"
                                                                           for d in sims))
    monitor = parts.services.flows._current()
    assert (monitor.config.learn_flows, monitor.config.learn_s) == (500, 86400.0)
    parts.store.engine.dispose()
