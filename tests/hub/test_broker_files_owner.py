"""Broker files written by a hub running as root: owned by the broker user when it exists, else left as they are.

A host without the ``mosquitto`` user (a container running the hub as root, no Mosquitto installed) has no
broker that drops to it; failing there left every access change queued in the outbox forever."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from iotguard.hub import mosquitto


def test_acl_written_as_root_without_the_broker_user_keeps_its_owner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    chowned: list[tuple[str, int, int]] = []

    def no_user(name: str) -> pwd.struct_passwd:
        raise KeyError(name)

    monkeypatch.setattr(mosquitto.os, "geteuid", lambda: 0)
    monkeypatch.setattr(mosquitto.pwd, "getpwnam", no_user)
    monkeypatch.setattr("os.chown", lambda path, uid, gid: chowned.append((str(path), uid, gid)))
    mosquitto._warn_no_user.cache_clear()
    mosquitto.update_acl_file(tmp_path, "user dev-1\ntopic write iotguard/default/dev-1/telemetry\n")
    assert (tmp_path / "acl").read_text().startswith("user dev-1")
    assert chowned == []
    assert "broker user 'mosquitto' does not exist" in caplog.text


def test_acl_written_as_root_belongs_to_the_broker_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chowned: list[tuple[int, int]] = []
    entry = pwd.struct_passwd(("mosquitto", "x", 4242, 4243, "", "/var/lib/mosquitto", "/usr/sbin/nologin"))
    monkeypatch.setattr(mosquitto.os, "geteuid", lambda: 0)
    monkeypatch.setattr(mosquitto.pwd, "getpwnam", lambda name: entry)
    monkeypatch.setattr("os.chown", lambda path, uid, gid: chowned.append((uid, gid)))
    monkeypatch.setattr("os.fchown", lambda fd, uid, gid: chowned.append((uid, gid)))
    mosquitto.update_acl_file(tmp_path, "user dev-1\n")
    assert chowned and set(chowned) == {(4242, 4243)}
