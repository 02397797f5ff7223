"""``iotguard firmware keys init``: offline keys that build a working repository."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.cli.firmware import PASSPHRASE_ENV
from iotguard.cli.firmware_keys import load_offline_signers
from iotguard.cli.main import main
from iotguard.errors import ConfigError
from iotguard.keys.keystore import KeyKind
from iotguard.updates import FirmwareRepository, KeyStoreSigner
from tests.updates.conftest import Fleet

PASSPHRASE = "correct horse battery staple"


def test_keys_init_writes_encrypted_keys_that_sign_a_root(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    keys = tmp_path / "offline"
    assert main(["firmware", "keys", "init", str(keys), "--root-keys", "3", "--threshold", "2"]) == 0
    expected = ["keys.json", "root-1.pem", "root-2.pem", "root-3.pem", "targets.pem"]
    assert sorted(p.name for p in keys.iterdir()) == expected
    for pem in keys.glob("*.pem"):
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in pem.read_bytes()
    offline = load_offline_signers(keys, PASSPHRASE.encode())
    assert offline.root_threshold == 2
    fleet.hub_keystore.generate("online-2", KeyKind.ED25519)
    repo = FirmwareRepository.create(
        root_signers=offline.root, root_threshold=offline.root_threshold, targets_signer=offline.targets,
        online_signer=KeyStoreSigner(fleet.hub_keystore, "online-2"), now=datetime.now(tz=UTC),
    )
    assert repo.root.roles["root"].threshold == 2 and len(repo.root.roles["root"].keyids) == 3
    # Offline keys are never overwritten.
    assert main(["firmware", "keys", "init", str(keys)]) == 1


def test_keys_refused_with_wrong_or_weak_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "short")
    assert main(["firmware", "keys", "init", str(tmp_path / "weak")]) == 1
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    assert main(["firmware", "keys", "init", str(tmp_path / "k")]) == 0
    with pytest.raises(ConfigError):
        load_offline_signers(tmp_path / "k", b"not the passphrase at all")
