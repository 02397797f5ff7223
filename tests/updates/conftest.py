"""A firmware TUF repository (python-tuf) and a device that updates from it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from iotguard.agent.firmware import FirmwareUpdateClient, InstallStep, TransportFetcher
from iotguard.agent.slots import BootedSlot
from iotguard.keys.keystore import KeyKind
from iotguard.keys.software import SoftwareKeyStore
from iotguard.updates import FirmwareRelease, FirmwareRepository, KeyStoreSigner

BASE_URL = "https://hub.test/firmware"
MODEL = "thermo"
OTHER_MODEL = "camera"


def image(model: str, version: int, size: int = 2048) -> bytes:
    header = f"{model} firmware {version}\n".encode()
    return header + hashlib.shake_256(header).digest(size - len(header))


@dataclass
class Fleet:
    """The repository, its keys, what the hub serves, and a device's key store."""

    repo: FirmwareRepository
    root_signers: list[CryptoSigner]
    targets_signer: CryptoSigner
    online_signer: KeyStoreSigner
    model_signers: dict[str, CryptoSigner]
    hub_keystore: SoftwareKeyStore
    device_keystore: SoftwareKeyStore
    served: dict[str, bytes] = field(default_factory=dict)
    overrides: dict[str, bytes | None] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)

    def sync(self) -> None:
        """The hub serves the repository's current files."""
        self.served = dict(self.repo.files())

    def transport(self, url: str) -> bytes | None:
        assert url.startswith(BASE_URL + "/")
        path = url[len(BASE_URL) + 1 :]
        self.requested.append(path)
        if path in self.overrides:
            return self.overrides[path]
        return self.served.get(path)

    def publish(self, model: str, version: int, now: datetime | None = None) -> FirmwareRelease:
        data = image(model, version)
        release = FirmwareRelease.for_image(
            model, version, data, end_of_support=date(2031, 12, 31),
            disclosure_contact="https://example.org/security", measurements={"app": hashlib.sha256(data).hexdigest()},
        )
        self.repo.publish(
            release, data, model_signer=self.model_signers[model], online_signer=self.online_signer,
            now=now or datetime.now(tz=UTC),
        )
        self.sync()
        return release

    def client(
        self,
        data_dir: Path,
        *,
        model: str = MODEL,
        self_test: Callable[[BootedSlot, bytes], None] | None = None,
        on_step: Callable[[InstallStep], None] | None = None,
    ) -> FirmwareUpdateClient:
        return FirmwareUpdateClient(
            data_dir, model=model, counters=self.device_keystore, fetcher=TransportFetcher(self.transport),
            base_url=BASE_URL, self_test=self_test or (lambda _slot, _image: None), on_step=on_step,
        )

    def device(self, data_dir: Path, *, model: str = MODEL, **kwargs: object) -> FirmwareUpdateClient:
        """A device with the fleet's root trusted and factory firmware 1 installed."""
        FirmwareUpdateClient.trust(data_dir, self.repo.files()["metadata/1.root.json"])
        client = self.client(data_dir, model=model, **kwargs)  # type: ignore[arg-type]
        client.slots.provision(image(model, 1), 1)
        return client


def build_fleet(tmp_path: Path, now: datetime | None = None) -> Fleet:
    now = now or datetime.now(tz=UTC)
    hub_keys = SoftwareKeyStore(tmp_path / "hub-keys", device_binding=b"hub key store binding 0000001")
    hub_keys.generate("tuf-online", KeyKind.ED25519)
    online = KeyStoreSigner(hub_keys, "tuf-online")
    roots = [CryptoSigner.generate_ed25519() for _ in range(3)]
    targets = CryptoSigner.generate_ed25519()
    models = {m: CryptoSigner.generate_ed25519() for m in (MODEL, OTHER_MODEL)}
    repo = FirmwareRepository.create(
        root_signers=roots, root_threshold=2, targets_signer=targets, online_signer=online, now=now,
    )
    for model, signer in models.items():
        repo.add_model(model, model_signer=signer, targets_signer=targets, online_signer=online, now=now)
    device_keys = SoftwareKeyStore(tmp_path / "device-keys", device_binding=b"device key store binding 001")
    fleet = Fleet(repo, roots, targets, online, models, hub_keys, device_keys)
    fleet.sync()
    return fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return build_fleet(tmp_path)


def cli_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str) -> tuple[list[str], Path, Path]:
    """``firmware keys init``, ``firmware init`` and ``firmware model`` through the CLI against a hub in
    ``tmp_path``; returns the ``--config`` arguments, the offline key directory and the initial root file."""
    from iotguard.cli.firmware import PASSPHRASE_ENV
    from iotguard.cli.main import main

    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{tmp_path / "hub"}"\n')
    keys, root, cfg = tmp_path / "offline", tmp_path / "root.json", ["--config", str(conf)]
    assert main(["firmware", "keys", "init", str(keys)]) == 0
    assert main(["firmware", "init", *cfg, "--keys", str(keys), "--root-out", str(root)]) == 0
    assert main(["firmware", "model", *cfg, "--keys", str(keys), model]) == 0
    return cfg, keys, root
