"""The audit CLI and REST API, end to end on a SQLite hub database."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from iotguard.audit import AuditEvent, EventType, Monitor, NoteVerifier, manufacturing_record
from iotguard.audit.provenance import provenance, verify_chain_of_custody
from iotguard.cli import audit as audit_cli
from iotguard.errors import ProofError, RollbackError
from iotguard.hub.audit_api import HttpLogSource, make_audit_router
from iotguard.hub.audit_store import FileMonitorState, open_audit_log
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.keys.software import SoftwareKeyStore

ORIGIN = "cli.test/audit"
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    audit_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def hub(tmp_path: Path) -> tuple[str, Path]:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(url)
    migrate(engine)
    log = open_audit_log(engine, SoftwareKeyStore(tmp_path / "keys"), ORIGIN)
    log.append(
        [
            manufacturing_record(
                "dev-1", model="m1", serial="s1", firmware="1.0", public_key=b"\x01" * 32, made_at=T0
            ),
            *[
                AuditEvent(EventType.AUTH_FAILED, T0 + timedelta(seconds=i), "hub", f"dev-{i % 3}")
                for i in range(50)
            ],
        ]
    )
    return url, tmp_path


def common(url: str, tmp: Path) -> list[str]:
    return ["--db", url, "--keys", str(tmp / "keys"), "--origin", ORIGIN]


def test_export_and_verify_offline(hub: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    url, tmp = hub
    run("audit", "key", *common(url, tmp))
    vkey = capsys.readouterr().out.strip()
    run("audit", "checkpoint", *common(url, tmp), "-o", str(tmp / "cp1"))
    export = tmp / "export.json"
    assert run("audit", "export", *common(url, tmp), "--start", "10", "-o", str(export)) == 0
    assert run("audit", "verify", str(export), "--key", vkey, "--trusted", str(tmp / "cp1")) == 0
    assert "OK: entries 10..50" in capsys.readouterr().out
    data = json.loads(export.read_text())
    data["entries"][5], data["entries"][6] = data["entries"][6], data["entries"][5]
    export.write_text(json.dumps(data))
    with pytest.raises(ProofError):
        run("audit", "verify", str(export), "--key", vkey)
    run("audit", "proof", "inclusion", "7", *common(url, tmp), "-o", str(tmp / "incl.json"))
    assert run("audit", "verify", str(tmp / "incl.json"), "--key", vkey) == 0


def test_monitor_and_witness_commands(hub: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    url, tmp = hub
    run("audit", "key", *common(url, tmp))
    vkey = capsys.readouterr().out.strip()
    run("audit", "checkpoint", *common(url, tmp), "-o", str(tmp / "cp1"))
    state = str(tmp / "monitor.json")
    assert run("audit", "monitor", *common(url, tmp), "--key", vkey, "--state", state, "--once") == 0
    assert FileMonitorState(state).load() is not None
    wdir = str(tmp / "witness")
    run("witness", "init", "--state", wdir, "--name", "w.test/1")
    capsys.readouterr()
    args = ["--state", wdir, "--name", "w.test/1", "--log-key", vkey]
    assert run("witness", "cosign", *args, "--checkpoint", str(tmp / "cp1")) == 0
    assert "\u2014 w.test/1 " in capsys.readouterr().out
    engine = make_engine(url)
    log = open_audit_log(engine, SoftwareKeyStore(tmp / "keys"), ORIGIN)
    log.append([AuditEvent(EventType.CONSENT_CHANGED, T0, "owner", "dev-1", {"purpose": "health"})])
    run("audit", "checkpoint", *common(url, tmp), "-o", str(tmp / "cp2"))
    run("audit", "proof", "consistency", "51", "52", *common(url, tmp), "-o", str(tmp / "proof.json"))
    assert (
        run("witness", "cosign", *args, "--checkpoint", str(tmp / "cp2"), "--proof", str(tmp / "proof.json"))
        == 0
    )
    with pytest.raises(RollbackError):
        run("witness", "cosign", *args, "--checkpoint", str(tmp / "cp1"))


def test_rest_api_serves_proofs_the_monitor_accepts(hub: tuple[str, Path]) -> None:
    url, tmp = hub
    log = open_audit_log(make_engine(url), SoftwareKeyStore(tmp / "keys"), ORIGIN)

    def require_operator(authorization: str = Header(default="")) -> None:
        if authorization != "Bearer op-token":
            raise HTTPException(401, "unauthenticated")

    app = FastAPI()
    app.include_router(make_audit_router(log, require_operator))
    client = TestClient(app)
    assert client.get("/audit/checkpoint").status_code == 401
    auth = {"Authorization": "Bearer op-token"}
    assert client.get("/audit/checkpoint", headers=auth).status_code == 404
    assert client.post("/audit/checkpoint", headers=auth).status_code == 200
    proof = client.get("/audit/proof/inclusion", params={"index": 3}, headers=auth).json()
    assert proof["tree_size"] == 51 and len(proof["proof"]) == 6
    assert client.get("/audit/proof/inclusion", params={"index": 99}, headers=auth).status_code == 400
    assert client.get("/audit/export", params={"start": 40}, headers=auth).status_code == 200
    source = HttpLogSource("http://testserver", "op-token", client=client)
    monitor = Monitor(NoteVerifier.from_vkey(log.verifier.vkey()))
    first = monitor.poll(source, None)
    assert first.ok and first.new_entries == 51
    log.append([AuditEvent(EventType.DATA_ERASED, T0, "dpo", "dev-2", {"records": 12})])
    client.post("/audit/checkpoint", headers=auth)
    second = monitor.poll(source, first.state)
    assert second.ok and second.new_entries == 1


def test_device_chain_of_custody(hub: tuple[str, Path]) -> None:
    url, tmp = hub
    log = open_audit_log(make_engine(url), SoftwareKeyStore(tmp / "keys"), ORIGIN)
    chain = provenance(log, "dev-1")
    events = verify_chain_of_custody(chain, log.verifier)
    assert events[0].type == EventType.DEVICE_MANUFACTURED
    assert events[0].details["serial"] == "s1"
    assert [link.index for link in chain.links] == [0, *range(2, 51, 3)]
    chain.links[1].bundle.proof[0] = b"\x00" * 32
    with pytest.raises(ProofError):
        verify_chain_of_custody(chain, log.verifier)
