"""``iotguard puf report``."""

from __future__ import annotations

import json

import pytest

from iotguard.cli.main import main


def test_puf_report_prints_metrics_and_failure_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["puf", "report", "--devices", "60", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for needle in ("uniqueness", "reliability", "uniformity", "bit-aliasing", "measured key-failure rate"):
        assert needle in out


def test_puf_report_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["puf", "report", "--devices", "40", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["devices"] == 40
    assert report["failures"] == 0
    assert report["evidence"]["key_upper"] < 1e-6
    assert report["arbiter_lr_accuracy"] > 0.95


def test_puf_report_rejects_a_silly_population() -> None:
    assert main(["puf", "report", "--devices", "1"]) == 2
