"""``iotguard broker config`` through its argparse hook."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from iotguard.cli.broker_config import add_config_command
from iotguard.errors import ConfigError


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="iotguard")
    sub = parser.add_subparsers(dest="command", required=True)
    broker = sub.add_parser("broker").add_subparsers(dest="broker_command", required=True)
    add_config_command(broker)
    return parser.parse_args(argv)


def test_broker_config_writes_a_complete_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "hub-data"
    data.mkdir()
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{data}"\n')
    out = tmp_path / "broker"
    args = _parse(["broker", "config", "--config", str(conf), "--out", str(out), "--hostname", "mqtt.local",
                   "--port", "8883", "--user", "root"])
    assert args.func(args) == 0
    text = (out / "mosquitto.conf").read_text()
    for line in ["allow_anonymous false", "require_certificate true", "use_identity_as_username true",
                 "tls_version tlsv1.3", "listener 8883", f"crlfile {out.resolve() / 'crl.pem'}"]:
        assert line in text
    assert stat.S_IMODE(os.stat(out / "server.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out / "hub.key").st_mode) == 0o600
    printed = capsys.readouterr().out
    assert "PRIVATE KEY" not in printed and (out / "server.key").read_text() not in printed
    args = _parse(["broker", "config", "--config", str(conf), "--out", str(out), "--hostname", "mqtt.local",
                   "--access-only", "--user", "root"])
    assert args.func(args) == 0


def test_broker_config_needs_an_initialised_hub(tmp_path: Path) -> None:
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{tmp_path / "missing"}"\n')
    args = _parse(["broker", "config", "--config", str(conf), "--out", str(tmp_path / "b"), "--hostname", "h"])
    with pytest.raises(ConfigError):
        args.func(args)
