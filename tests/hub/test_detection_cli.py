"""Detection on the hub host: the quarantine reaches the broker ACL through the outbox; the CLI reads and acts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotguard.cli.main import main
from iotguard.detection import Alert, Severity
from iotguard.hub.compose import build_hub_services
from tests.hub.test_outbox_effects import _config, _enroll, _events

T1 = 1_767_225_600.0


def _telemetry_writers(acl: str) -> set[str]:
    users, current = set(), ""
    for line in acl.splitlines():
        if line.startswith("user "):
            current = line.split(" ", 1)[1]
        elif line.startswith("topic write ") and line.endswith("/telemetry") and current:
            users.add(current)
    return users


def test_playbook_quarantine_reaches_the_broker_acl_and_the_cli_reports_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf, cfg = _config(tmp_path)
    services = build_hub_services(cfg)
    for d in ("dev-0", "dev-1"):
        _enroll(services, tmp_path, d, str(services.lifecycle.add_device(d, "thermo-1")))
    services.drainer().drain()
    acl = Path(cfg.mosquitto_dir) / "acl"
    assert {"dev-0", "dev-1"} <= _telemetry_writers(acl.read_text())
    alert = Alert.create("dev-0", "scan_fanout", 40.0, Severity.HIGH, (T1, T1 + 15), {"new_destinations": 40})
    services.detection.raise_alerts([alert])
    services.drainer().drain()  # the broker access row the quarantine queued rewrites the ACL
    writers = _telemetry_writers(acl.read_text())
    assert "dev-0" not in writers and "dev-1" in writers

    capsys.readouterr()
    assert main(["alerts", "--config", str(conf), "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["alert_id"] for a in listed] == [alert.alert_id]
    assert main(["alerts", "--config", str(conf), "ack", alert.alert_id, "--actor", "olga"]) == 0
    assert main(["detect", "status", "--config", str(conf), "--json"]) == 0
    status = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert status["quarantined"] == ["dev-0"] and status["unacknowledged"] == 0
    assert [a["kind"] for a in status["awaiting_approval"]] == ["revoke"]

    book = tmp_path / "watch.toml"
    book.write_text('format = "iotguard-playbook/1"\nname = "watch-only"\nrevision = 7\n'
                    '[[rules]]\nname = "none"\ndetectors = ["beaconing"]\nactions = ["reattest"]\n')
    assert main(["playbooks", "activate", str(book), "--config", str(conf), "--actor", "sam"]) == 0
    capsys.readouterr()
    assert main(["playbooks", "ls", "--config", str(conf)]) == 0
    assert "watch-only revision 7" in capsys.readouterr().out
    types = {(e.type, e.actor) for e in _events(build_hub_services(cfg))}
    assert {("detection.acknowledged", "olga"), ("detection.playbook", "sam"),
            ("detection.alert", "hub.detection"), ("detection.action", "hub.detection")} <= types
