"""Two witnesses run as a user runs them (``iotguard witness run --listen``, HTTPS on loopback)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.audit import AuditEvent, EventType, NoteVerifier, verify_cosigned
from iotguard.audit.monitor import AlertKind
from iotguard.audit.witness_protocol import detect_split_view
from iotguard.errors import ProofError
from iotguard.hub.audit_store import open_audit_log
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.witness_server import latest_cosigned
from iotguard.keys.software import SoftwareKeyStore
from tests.audit.test_audit_cli_api import run

pytestmark = pytest.mark.slow  # real witness processes over HTTPS
ORIGIN = "https.test/audit"
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "iotguard", *args], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def wait_for(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "witness exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("witness did not start")


def hub_log(tmp: Path, name: str, n: int) -> list[str]:
    url = f"sqlite:///{tmp / (name + '.db')}"
    engine = make_engine(url)
    migrate(engine)
    log = open_audit_log(engine, SoftwareKeyStore(tmp / "hub-keys"), ORIGIN)
    log.append([AuditEvent(EventType.AUTH_FAILED, T0, "hub", f"{name}-{i}") for i in range(n)])
    return ["--db", url, "--keys", str(tmp / "hub-keys"), "--origin", ORIGIN]


@pytest.fixture
def witnesses(tmp_path: Path) -> Iterator[list[tuple[str, str, Path]]]:
    opts = hub_log(tmp_path, "honest", 12)
    assert run("audit", "key", *opts) == 0
    log_key = cli("audit", "key", *opts)
    procs: list[subprocess.Popen[str]] = []
    out: list[tuple[str, str, Path]] = []
    try:
        for name in ("w1", "w2"):
            state = tmp_path / name
            vkey = cli("witness", "init", "--state", str(state), "--name", f"{name}.test/witness")
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "iotguard", "witness", "run", "--state", str(state),
                 "--name", f"{name}.test/witness", "--log-key", log_key, "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            procs.append(proc)
            wait_for(port, proc)
            out.append((f"https://127.0.0.1:{port}", vkey, state))
        yield out
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=10)  # drains and closes the pipes


def cosign_args(ws: list[tuple[str, str, Path]]) -> list[str]:
    args: list[str] = []
    for url, vkey, state in ws:
        args += ["--witness", url, "--witness-key", vkey, "--witness-ca", str(state / "tls-cert.pem")]
    return args


def test_two_witnesses_cosign_over_https_and_catch_a_split_view(
    tmp_path: Path, witnesses: list[tuple[str, str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    honest = ["--db", f"sqlite:///{tmp_path / 'honest.db'}", "--keys", str(tmp_path / "hub-keys"), "--origin", ORIGIN]
    assert run("audit", "key", *honest) == 0
    log_key = NoteVerifier.from_vkey(capsys.readouterr().out.strip())
    keys = [NoteVerifier.from_vkey(v) for _, v, _ in witnesses]
    final = tmp_path / "final.note"
    assert run("audit", "cosign", *honest, *cosign_args(witnesses), "--quorum", "2", "-o", str(final)) == 0
    assert len(verify_cosigned(final.read_text(), log_key, keys, 2)) == 2

    # The log grows; the witnesses need a consistency proof from 12, which the hub sends after their 409.
    engine = make_engine(honest[1])
    log = open_audit_log(engine, SoftwareKeyStore(tmp_path / "hub-keys"), ORIGIN)
    log.append([AuditEvent(EventType.AUTH_FAILED, T0, "hub", f"more-{i}") for i in range(8)])
    assert run("audit", "cosign", *honest, *cosign_args(witnesses), "--quorum", "2", "-o", str(final)) == 0
    assert final.read_text().split("\n")[1] == "20"

    # Split view: the operator forks the log (same key, same size 20, another history) and shows
    # the fork to witness 2 only. The witness refuses it, raises an alert, and no quorum forms.
    forked = hub_log(tmp_path, "forked", 20)
    capsys.readouterr()
    with pytest.raises(ProofError, match="not final"):
        run("audit", "cosign", *forked, *cosign_args(witnesses[1:]), "--quorum", "1")
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["alert"] == AlertKind.SPLIT_VIEW
    forked_log = open_audit_log(make_engine(forked[1]), SoftwareKeyStore(tmp_path / "hub-keys"), ORIGIN)
    reported = [AuditEvent.from_cbor(e) for e in forked_log.entries(20, forked_log.size())]
    assert [e.type for e in reported] == ["log.split_view_reported"]
    alerts = [json.loads(line) for line in (witnesses[1][2] / "alerts.jsonl").read_text().splitlines()]
    assert alerts and alerts[0]["alert"] == AlertKind.SPLIT_VIEW
    # Had witness 2 seen the fork first, comparing what the two witnesses cosigned exposes it.
    seen = [latest_cosigned(state, log_key) or "" for _, _, state in witnesses]
    assert detect_split_view(seen, log_key) == []
    fork_note = alerts[0]["checkpoint"]
    assert [a.kind for a in detect_split_view([*seen, fork_note], log_key)] == [AlertKind.SPLIT_VIEW]


def test_plain_http_client_is_refused_by_the_tls_witness(witnesses: list[tuple[str, str, Path]]) -> None:
    import httpx

    url = witnesses[0][0].replace("https://", "http://") + "/add-checkpoint"
    with pytest.raises(httpx.HTTPError):
        httpx.post(url, content=b"old 0\n\nx", timeout=5)
    # And without pinning its self-signed certificate, the hub does not trust it.
    with pytest.raises(httpx.HTTPError):
        httpx.post(witnesses[0][0] + "/add-checkpoint", content=b"old 0\n\nx", timeout=5)
