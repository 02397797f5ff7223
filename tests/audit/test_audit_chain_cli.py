"""``iotguard audit anchor-*`` and ``audit verify`` of anchor proofs, against a local chain over JSON-RPC."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.audit import AuditEvent, EventType
from iotguard.errors import ProofError
from iotguard.hub.audit_store import open_audit_log
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.keys.software import SoftwareKeyStore
from tests.audit.evm_rpc import evm_rpc
from tests.audit.test_audit_cli_api import run

ORIGIN = "chain-cli.test/audit"
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def add_events(url: str, keys: Path, n: int, tag: str) -> None:
    log = open_audit_log(make_engine(url), SoftwareKeyStore(keys), ORIGIN)
    log.append([AuditEvent(EventType.AUTH_FAILED, T0, "hub", f"{tag}-{i}") for i in range(n)])


def test_deploy_submit_export_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    migrate(make_engine(url))
    add_events(url, tmp_path / "keys", 20, "a")
    log_opts = ["--db", url, "--keys", str(tmp_path / "keys"), "--origin", ORIGIN]
    with evm_rpc() as rpc:
        from web3 import Web3

        sender = Web3(Web3.HTTPProvider(rpc)).eth.accounts[0]
        assert run("audit", "anchor-deploy", "--rpc", rpc, "--sender", sender) == 0
        contract = capsys.readouterr().out.strip()
        note = tmp_path / "cp.note"
        chain = ["--rpc", rpc, "--contract", contract]
        assert run("audit", "anchor-submit", *log_opts, *chain, "--sender", sender, "-o", str(note)) == 0
        submitted = json.loads(capsys.readouterr().out)
        assert submitted["size"] == 20 and submitted["tx"].startswith("0x") and submitted["gas"] > 21000
        proof = tmp_path / "anchor.json"
        assert run("audit", "anchor-proof", str(note), *chain, "-o", str(proof)) == 0
        assert run("audit", "key", *log_opts) == 0
        key = capsys.readouterr().out.strip()
        # Offline, with only the log key and the contract address the auditor trusts.
        assert run("audit", "verify", str(proof), "--key", key, "--contract", contract) == 0
        assert "anchored by" in capsys.readouterr().out
        # Later: the log grew; it is consistent with what was anchored, and the block is canonical.
        add_events(url, tmp_path / "keys", 7, "b")
        run("audit", "checkpoint", *log_opts)
        cons = tmp_path / "cons.json"
        assert run("audit", "proof", "consistency", "20", *log_opts, "-o", str(cons)) == 0
        assert run("audit", "verify", str(proof), "--key", key, "--rpc", rpc, "--consistency", str(cons)) == 0
        out = capsys.readouterr().out
        assert "canonical" not in out and "consistent with the anchored checkpoint" in out

        # A rewritten log (same key, same size, other entries) fails against the anchor.
        url2 = f"sqlite:///{tmp_path / 'forged.db'}"
        migrate(make_engine(url2))
        add_events(url2, tmp_path / "keys", 27, "forged")
        forged_opts = ["--db", url2, "--keys", str(tmp_path / "keys"), "--origin", ORIGIN]
        run("audit", "checkpoint", *forged_opts)
        run("audit", "checkpoint", *forged_opts)
        forged_cons = tmp_path / "forged.json"
        # The forger cannot prove consistency from the anchored size-20 root: its own size-20 root differs.
        assert run("audit", "proof", "consistency", "20", *forged_opts, "-o", str(forged_cons)) == 0
        with pytest.raises(ProofError, match="rewritten"):
            run("audit", "verify", str(proof), "--key", key, "--consistency", str(forged_cons))
        with pytest.raises(ProofError, match="another contract"):
            run("audit", "verify", str(proof), "--key", key, "--contract", "0x" + "22" * 20)
