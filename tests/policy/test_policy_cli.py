"""``iotguard policy`` end to end through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotguard.cli.main import main
from iotguard.policy import default_policy_set


def test_validate_and_test_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate"]) == 0
    assert main(["policy", "test"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_validate_rejects_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.cedar"
    bad.write_text('@id("x") permit (principal is Robot, action, resource);')
    assert main(["policy", "validate", str(bad)]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_activate_diff_show_explain_acl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    first = tmp_path / "v1.cedar"
    first.write_text(default_policy_set().text)
    second = tmp_path / "v2.cedar"
    second.write_text(default_policy_set().text.replace('@id("analyst-private-queries")', '@id("analyst-q")'))
    assert main(["policy", "--database-url", db, "activate", str(first), "--actor", "sam"]) == 0
    assert main(["policy", "--database-url", db, "activate", str(second), "--actor", "sam"]) == 0
    out = capsys.readouterr().out
    assert "+ analyst-q" in out and "- analyst-private-queries" in out and "policy version 2 active" in out
    assert main(["policy", "--database-url", db, "diff", "v1", "v2"]) == 0
    assert "+ analyst-q" in capsys.readouterr().out
    assert main(["policy", "--database-url", db, "show", "--history"]) == 0
    assert "activated v2 (was v1)" in capsys.readouterr().out
    assert main(["policy", "--database-url", db, "activate", "--version", "1"]) == 0

    posture = tmp_path / "posture.json"
    posture.write_text(json.dumps({"d1": {"segment": "s1", "trust_tier": "failed"}}))
    args = [
        "policy",
        "explain",
        "--posture",
        str(posture),
        "--principal",
        "Device::d1",
        "--action",
        "publish",
        "--resource",
        "Topic::iotguard/s1/d1/telemetry",
        "--now",
        "2026-01-01T12:00:00+00:00",
    ]
    assert main(args) == 3
    assert "denied by forbid: attestation-failed" in capsys.readouterr().out

    acl = tmp_path / "acl"
    assert (
        main(
            [
                "policy",
                "acl",
                "--posture",
                str(posture),
                "--out",
                str(acl),
                "--service",
                "hub:readwrite:iotguard/#",
            ]
        )
        == 0
    )
    text = acl.read_text()
    assert "user hub\ntopic readwrite iotguard/#" in text
    assert "topic write iotguard/attest/d1/evidence" in text
    assert "iotguard/s1/d1/telemetry" not in text  # failed attestation: no telemetry at the broker
