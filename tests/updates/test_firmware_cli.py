"""``iotguard firmware init|model|publish|ls|revoke`` against a hub's database, then a device installs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from iotguard.agent.firmware import FirmwareUpdateClient, TransportFetcher
from iotguard.cli.firmware import PASSPHRASE_ENV
from iotguard.cli.main import main
from iotguard.config import load_config
from iotguard.hub.compose import build_hub_services
from iotguard.keys.software import SoftwareKeyStore
from tests.updates.conftest import BASE_URL, MODEL, image


def test_cli_publishes_a_release_a_device_installs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{tmp_path / "hub"}"\n')
    keys, root = tmp_path / "offline", tmp_path / "root.json"
    cfg = ["--config", str(conf)]
    assert main(["firmware", "keys", "init", str(keys)]) == 0
    assert main(["firmware", "init", *cfg, "--keys", str(keys), "--root-out", str(root)]) == 0
    assert main(["firmware", "model", *cfg, "--keys", str(keys), MODEL]) == 0
    (tmp_path / "fw.img").write_bytes(image(MODEL, 2))
    (tmp_path / "fw3.img").write_bytes(image(MODEL, 3))
    digest = hashlib.sha256(b"app stage").hexdigest()
    assert main(["firmware", "publish", *cfg, "--keys", str(keys), MODEL, "2", str(tmp_path / "fw.img"),
                 "--end-of-support", "2031-12-31", "--contact", "security@example.org",
                 "--measurement", f"app={digest}"]) == 0
    capsys.readouterr()
    assert main(["firmware", "ls", *cfg, MODEL]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["version"], listed["measurements"], listed["end_of_support"]) == (2, {"app": digest}, "2031-12-31")

    services = build_hub_services(load_config(str(conf)).hub)
    device_keys = SoftwareKeyStore(tmp_path / "dev-keys", device_binding=b"device key store binding 001")
    FirmwareUpdateClient.trust(tmp_path / "dev", root.read_bytes())
    client = FirmwareUpdateClient(
        tmp_path / "dev", model=MODEL, counters=device_keys, base_url=BASE_URL, self_test=lambda _s, _i: None,
        fetcher=TransportFetcher(lambda url: services.firmware.file(url[len(BASE_URL) + 1:])),
    )
    client.slots.provision(image(MODEL, 1), 1)
    assert client.install(2).version == 2

    # Root rotation to new offline keys: the device walks the chain and keeps updating.
    new_keys = tmp_path / "offline-2"
    assert main(["firmware", "keys", "init", str(new_keys), "--root-keys", "2", "--threshold", "2"]) == 0
    assert main(["firmware", "keys", "rotate", *cfg, str(keys), str(new_keys)]) == 0
    assert main(["firmware", "publish", *cfg, "--keys", str(keys), MODEL, "3", str(tmp_path / "fw3.img"),
                 "--end-of-support", "2031-12-31", "--contact", "security@example.org"]) == 0
    assert client.install(3).version == 3
    assert (tmp_path / "dev" / "firmware" / "metadata" / "root_history" / "2.root.json").exists()
    services.store.engine.dispose()

    assert main(["firmware", "revoke", *cfg, "--keys", str(keys), MODEL, "3"]) == 0
    capsys.readouterr()
    assert main(["firmware", "ls", *cfg, MODEL]) == 0
    assert [r["version"] for r in json.loads(capsys.readouterr().out)] == [2]
    # The hub alone cannot publish: without the model's offline key the command fails.
    monkeypatch.setenv(PASSPHRASE_ENV, "not the right passphrase")
    assert main(["firmware", "publish", *cfg, "--keys", str(keys), MODEL, "3", str(tmp_path / "fw.img"),
                 "--end-of-support", "2031-12-31", "--contact", "security@example.org"]) == 1
