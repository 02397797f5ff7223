"""``iotguard firmware keys rotate DIR --online``: a new online key in the hub's key store, named by a new root;
devices follow, and what the old (stolen) online key signs afterwards is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotguard.agent.firmware import FirmwareUpdateClient, TransportFetcher
from iotguard.audit.events import AuditEvent
from iotguard.cli.main import main
from iotguard.config import load_config
from iotguard.errors import UpdateRefused
from iotguard.hub.compose import HubServices, build_hub_services
from iotguard.hub.services.firmware import ONLINE_KEY_LABEL
from iotguard.keys.software import SoftwareKeyStore
from iotguard.updates import FirmwareRepository, KeyStoreSigner
from tests.updates.conftest import BASE_URL, MODEL, cli_repository, image


def test_online_key_rotation_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg, keys, root = cli_repository(tmp_path, monkeypatch, MODEL)
    conf = cfg[1]
    for v in (2, 3):
        (tmp_path / f"fw{v}.img").write_bytes(image(MODEL, v))

    def publish(version: int) -> None:
        assert main(["firmware", "publish", *cfg, "--keys", str(keys), MODEL, str(version),
                     str(tmp_path / f"fw{version}.img"), "--end-of-support", "2031-12-31",
                     "--contact", "security@example.org"]) == 0

    publish(2)
    services = build_hub_services(load_config(str(conf)).hub)
    served: dict[str, bytes] = {}

    def transport(url: str) -> bytes | None:
        path = url[len(BASE_URL) + 1:]
        return served[path] if path in served else services.firmware.file(path)

    FirmwareUpdateClient.trust(tmp_path / "dev", root.read_bytes())
    client = FirmwareUpdateClient(
        tmp_path / "dev", model=MODEL, base_url=BASE_URL, self_test=lambda _s, _i: None,
        counters=SoftwareKeyStore(tmp_path / "dev-keys", device_binding=b"device key store binding 001"),
        fetcher=TransportFetcher(transport))
    client.slots.provision(image(MODEL, 1), 1)
    assert client.install(2).version == 2

    assert main(["firmware", "keys", "rotate", *cfg, str(keys)]) == 1  # neither NEW_DIR nor --online
    capsys.readouterr()
    assert main(["firmware", "keys", "rotate", *cfg, str(keys), "--online"]) == 0
    new_keyid = json.loads(capsys.readouterr().out)["online_keyid"]
    old = KeyStoreSigner(services.keystore, ONLINE_KEY_LABEL)
    assert old.public_key.keyid != new_keyid
    publish(3)  # signed with the new online key, found through the root
    assert client.install(3).version == 3

    # A stolen old online key signs a fresh snapshot and timestamp: the device, which follows the root, refuses.
    stolen = FirmwareRepository.from_files(services.firmware._files.load())
    stolen.refresh_online(old, services.clock.now())
    served.update({p: b for p, b in stolen.files().items() if p.startswith("metadata/")})
    with pytest.raises(UpdateRefused, match="TUF refused"):
        client.fetch_release(4)
    events = [e.type for e in _audit(services)]
    assert "firmware.online_key_rotated" in events
    services.store.engine.dispose()


def _audit(services: HubServices) -> list[AuditEvent]:
    log = services.audit.log
    return [AuditEvent.from_cbor(e) for e in log.entries(0, log.size())]
