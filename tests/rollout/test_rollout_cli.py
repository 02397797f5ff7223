"""``iotguard rollout start|status|pause|resume|abort`` against a hub's database; each step is audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotguard.audit.events import AuditEvent
from iotguard.cli.main import main
from iotguard.config import load_config
from iotguard.hub.compose import build_hub_services
from tests.updates.conftest import cli_repository, image

MODEL = "thermo-1"


def test_rollout_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg, keys, _root = cli_repository(tmp_path, monkeypatch, MODEL)
    conf = cfg[1]
    (tmp_path / "fw.img").write_bytes(image(MODEL, 2))
    assert main(["firmware", "publish", *cfg, "--keys", str(keys), MODEL, "2", str(tmp_path / "fw.img"),
                 "--end-of-support", "2031-12-31", "--contact", "security@example.org"]) == 0
    capsys.readouterr()

    assert main(["rollout", *cfg, "start", MODEL, "3"]) == 1  # not published
    assert main(["rollout", *cfg, "start", MODEL, "2", "--stages", "50,10,100"]) == 1  # not increasing
    capsys.readouterr()
    assert main(["rollout", *cfg, "start", MODEL, "2", "--stages", "5,50,100", "--actor", "alice",
                 "--soak-s", "60"]) == 0
    started = json.loads(capsys.readouterr().out)
    assert (started["rollout_id"], started["state"], started["percent"], started["stages"]) == (
        f"{MODEL}-2", "running", 5.0, [5.0, 50.0, 100.0])
    assert main(["rollout", *cfg, "pause", f"{MODEL}-2", "--reason", "change freeze"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "paused"
    assert main(["rollout", *cfg, "pause", f"{MODEL}-2"]) == 1  # already paused
    assert main(["rollout", *cfg, "resume", f"{MODEL}-2"]) == 0
    capsys.readouterr()
    assert main(["rollout", *cfg, "status"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["state"] == "running"
    assert main(["rollout", *cfg, "abort", f"{MODEL}-2", "--reason", "found a bug"]) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "found a bug"
    assert main(["rollout", *cfg, "status", "nope"]) == 1

    services = build_hub_services(load_config(str(conf)).hub)
    log = services.audit.log
    events = [AuditEvent.from_cbor(e) for e in log.entries(0, log.size())]
    services.store.engine.dispose()
    assert [(e.type, e.actor) for e in events if e.type.startswith("rollout.")] == [
        ("rollout.started", "alice"), ("rollout.paused", "cli"), ("rollout.resumed", "cli"),
        ("rollout.aborted", "cli")]

