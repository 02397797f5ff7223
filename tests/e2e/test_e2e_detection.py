"""Detection and containment end to end with real processes.

``iotguard hub`` on Mosquitto (mutual TLS, ACL and CRL written by the hub),
a fleet of real agents publishing over mTLS, and an ``iotguard sensor``
process following a Zeek log directory. One device turns into a Mirai-style
scanner mid-run: the sensor streams the flows, the hub raises a
``scan_fanout`` alert, the default playbook quarantines the device, the
broker stops delivering its publishes, and the alert and each action are in
the audit log, verified against a signed checkpoint; the other devices keep
flowing with no alert.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from iotguard.audit import NoteVerifier
from iotguard.audit.verify import ExportBundle, verify_export
from iotguard.detection.zeek import format_conn_log
from iotguard.hub.services.sensing import ADDRESS_INVENTORY_FILE, SENSOR_MODEL
from iotguard.sim import Fleet, traffic
from tests.conftest import MosquittoTls
from tests.e2e.harness import HubProcess
from tests.e2e.test_e2e_mtls import _Device

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto]


def _wait_for(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def _rejected(hub: HubProcess, token: str) -> dict[str, int]:
    return dict(hub.stats(token)["rejected_total"])


def _publish_own_topic(hub: HubProcess, broker: MosquittoTls, fleet: Fleet, name: str) -> None:
    """The first device publishes a junk payload on its own telemetry topic with its transport certificate
    (delivered, the hub counts it ``malformed``)."""
    agent = fleet.devices[0].agent
    client = _Device(hub, broker.port, agent.dir / "transport.pem", name)
    assert client.connect()
    client.c.publish(agent.sealer.topic, b"\x86junk", qos=1).wait_for_publish(5)
    client.close()


def test_scanner_seen_by_the_sensor_is_quarantined_at_the_broker_and_audited(
        tmp_path: Path, mosquitto_tls: Callable[[dict[str, str]], MosquittoTls]) -> None:
    hub = HubProcess(tmp_path)
    broker = hub.use_mosquitto(mosquitto_tls)
    hub.start()
    sensor: subprocess.Popen[bytes] | None = None
    token = hub.operator_token()
    api = httpx.Client(base_url=hub.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=15,
                       verify=hub.verify())
    fleet = Fleet(hub.provisioner(token), hub_url=hub.api_url, broker_url=hub.broker_url,
                  data_dir=tmp_path / "fleet", ack_timeout_s=3.0)
    try:
        fleet.add_devices(3)
        fleet.send_round()
        assert _wait_for(lambda: fleet.pending() == 0), "the fleet's readings were not acknowledged"
        ids = [d.agent.device_id for d in fleet.devices]
        sims = [traffic.SimDevice(d, model, f"10.20.0.{11 + i}", "default")
                for i, (d, model) in enumerate(zip(ids, ("thermo", "motion", "meter"), strict=True))]
        (tmp_path / "hub" / ADDRESS_INVENTORY_FILE).write_text("".join(f"{s.address} {s.device_id}\n" for s in sims))

        # The sensor: enrolled like a device (model iotguard-sensor), following the Zeek log directory.
        zeek = tmp_path / "zeek"
        zeek.mkdir()
        now = time.time()
        log = zeek / "conn.log"
        log.write_bytes(format_conn_log(traffic.benign_traffic(sims, now - 1800, 1790.0).flows))
        code = hub.provisioner(token)("sensor-1", SENSOR_MODEL)
        sensor_dir = tmp_path / "sensor"
        sensor = subprocess.Popen(
            [sys.executable, "-m", "iotguard", "sensor", "--device-id", "sensor-1", "--enroll", code,
             "--zeek-dir", str(zeek), "--data-dir", str(sensor_dir), "--hub-url", hub.api_url,
             "--interval", "0.2"], env=hub.env, stdout=(tmp_path / "sensor.log").open("wb"),
            stderr=subprocess.STDOUT)

        def consumed() -> bool:
            try:
                return int(json.loads((sensor_dir / "sensor-position.json").read_text())["offset"]) == \
                    log.stat().st_size
            except (OSError, ValueError, KeyError):
                return False

        assert _wait_for(consumed, 60), (tmp_path / "sensor.log").read_text()
        assert api.get("/v1/alerts").json() == []  # benign traffic: no alert

        # Before: the broker delivers the device's publishes (the hub counts the junk one as malformed).
        malformed = _rejected(hub, token).get("malformed", 0)
        _publish_own_topic(hub, broker, fleet, "before")
        assert _wait_for(lambda: _rejected(hub, token).get("malformed", 0) == malformed + 1)

        # Mid-run, the first device starts scanning for telnet like Mirai.
        victim = sims[0].device_id
        scan = traffic.mirai_scan(sims[0], time.time(), 20.0).flows
        text = format_conn_log(scan)
        with log.open("ab") as f:  # data lines only: the header is already in the file
            f.write(b"".join(line for line in text.splitlines(keepends=True) if not line.startswith(b"#")))
        assert _wait_for(lambda: any(a["detector"] == "scan_fanout" for a in api.get("/v1/alerts").json()), 60), \
            (tmp_path / "sensor.log").read_text()
        alerts = api.get("/v1/alerts").json()
        assert {a["device"] for a in alerts} == {victim}  # normal devices: no alert
        alert_id = next(a["alert_id"] for a in alerts if a["detector"] == "scan_fanout")
        actions = {a["kind"]: a["outcome"] for a in api.get(f"/v1/alerts/{alert_id}").json()["actions"]}
        assert actions["quarantine"] == "done"

        # After: the broker no longer delivers its publishes; the other devices keep flowing.
        time.sleep(1.0)  # the ACL was rewritten and Mosquitto reloaded before the sensor's request was answered
        _publish_own_topic(hub, broker, fleet, "after")
        sent_before = sum(len(d.sent) for d in fleet.devices[1:])
        for _ in range(3):
            fleet.send_round()
        assert sum(len(d.sent) for d in fleet.devices[1:]) > sent_before
        assert _wait_for(lambda: all(d.agent.pending() == 0 for d in fleet.devices[1:])), "normal devices stopped"
        time.sleep(2.0)
        assert _rejected(hub, token).get("malformed", 0) == malformed + 1  # the scanner's publish never arrived
        assert {a["device"] for a in api.get("/v1/alerts").json()} == {victim}

        # The alert and every action are in the audit log, proven against a signed checkpoint.
        key = NoteVerifier.from_vkey(hub.cli("audit", "key").strip())
        assert api.post("/audit/checkpoint").status_code == 200
        segment = verify_export(ExportBundle.from_json(api.get("/audit/export").text), key)
        linked = [(e.type, e.details.get("action")) for e in segment.events if e.details.get("alert_id") == alert_id]
        assert ("detection.alert", None) in linked
        assert {a for t, a in linked if t == "detection.action"} == set(actions)
        assert any(e.type == "device.quarantined" and e.subject == victim for e in segment.events)
    finally:
        if sensor is not None:
            sensor.terminate()
            sensor.wait(timeout=20)
        fleet.close()
        hub.stop()
