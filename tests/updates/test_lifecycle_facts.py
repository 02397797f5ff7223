"""A release's end-of-support date and disclosure contact reach ``credentials eos`` and the privacy notice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotguard.cli.main import main
from iotguard.config import load_config
from iotguard.hub.compose import build_hub_services
from tests.updates.conftest import cli_repository, image

MODEL = "thermo-1"


def test_release_lifecycle_facts_in_credentials_eos_and_the_privacy_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    cfg, keys, _root = cli_repository(tmp_path, monkeypatch, MODEL)
    conf = cfg[1]
    for version, eos in ((2, "2030-06-30"), (3, "2031-12-31")):
        (tmp_path / "fw.img").write_bytes(image(MODEL, version))
        assert main(["firmware", "publish", *cfg, "--keys", str(keys), MODEL, str(version), str(tmp_path / "fw.img"),
                     "--end-of-support", eos, "--contact", "https://example.org/security"]) == 0
    capsys.readouterr()

    assert main(["credentials", *cfg, "eos", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{
        "model": MODEL, "release": 3, "end_of_support": "2031-12-31",
        "disclosure_contact": "https://example.org/security"}]

    services = build_hub_services(load_config(str(conf)).hub)
    services.lifecycle.add_device("dev-1", MODEL)
    services.store.engine.dispose()
    assert main(["credentials", *cfg, "eos", "warnings", "--days", "36500"]) == 0
    assert f"{MODEL:<16} ends 2031-12-31" in capsys.readouterr().out  # the newest release's date is the model's

    assert main(["privacy", "notice", MODEL, "--with-support", *cfg]) == 0
    notice = capsys.readouterr().out
    assert "receives security updates until 2031-12-31 (stated in its signed firmware release 3)" in notice
    assert "To report a security vulnerability: https://example.org/security." in notice
    assert main(["privacy", "notice", MODEL]) == 0
    assert "Security updates" not in capsys.readouterr().out
