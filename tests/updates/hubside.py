"""A hub whose firmware repository serves thermo-1 releases, and devices updating from it over the device plane."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from securesystemslib.signer import CryptoSigner

from iotguard.agent import Agent
from iotguard.agent.firmware import FirmwareUpdateClient
from iotguard.agent.slots import BootedSlot
from iotguard.agent.update_channel import REPOSITORY_URL, UpdateCheckIn, device_update_channel
from iotguard.updates import FirmwareRelease
from tests.hub.conftest import HubParts, make_hub
from tests.updates.conftest import image

HUB_MODEL = "thermo-1"


@dataclass
class HubFirmware:
    """The hub, its offline keys, and the initial root devices trust."""

    hub: HubParts
    roots: list[CryptoSigner]
    targets: CryptoSigner
    model_key: CryptoSigner
    root: bytes
    broken: set[int] = field(default_factory=set)

    def publish(self, version: int) -> FirmwareRelease:
        data = image(HUB_MODEL, version)
        release = FirmwareRelease.for_image(
            HUB_MODEL, version, data, end_of_support=date(2031, 12, 31),
            disclosure_contact="https://example.org/security",
            measurements={"app": hashlib.sha256(data).hexdigest()})
        self.hub.services.firmware.publish(release, data, model_signer=self.model_key, actor="test")
        return release

    def self_test(self, _slot: BootedSlot, data: bytes) -> None:
        """The device's self-test: a release marked broken never comes up."""
        version = int(data.split(b"\n", 1)[0].rsplit(b" ", 1)[1])
        if version in self.broken:
            raise RuntimeError("watchdog: application did not come up")

    def device(self, device_id: str, *, enroll: bool = True,
               self_test: Callable[[BootedSlot, bytes], None] | None = None
               ) -> tuple[Agent, FirmwareUpdateClient, UpdateCheckIn]:
        """An enrolled agent of thermo-1 with factory firmware 1, updating over the device channel."""
        agent = self.hub.agent(device_id, model=HUB_MODEL, enroll=enroll)
        fetcher, check_in = device_update_channel(agent)
        data_dir = self.hub.tmp / "agents" / device_id
        FirmwareUpdateClient.trust(data_dir, self.root)
        client = FirmwareUpdateClient(data_dir, model=HUB_MODEL, counters=agent.keystore, fetcher=fetcher,
                                      base_url=REPOSITORY_URL, self_test=self_test or self.self_test)
        client.slots.provision(image(HUB_MODEL, 1), 1)
        return agent, client, check_in


def hub_firmware(hub: HubParts) -> HubFirmware:
    roots = [CryptoSigner.generate_ed25519() for _ in range(3)]
    targets, model_key = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    firmware = hub.services.firmware
    root = firmware.initialise(root_signers=roots, root_threshold=2, targets_signer=targets, actor="test")
    firmware.add_model(HUB_MODEL, model_signer=model_key, targets_signer=targets, actor="test")
    return HubFirmware(hub, roots, targets, model_key, root)


def firmware_hub(tmp_path: Path) -> Iterator[HubFirmware]:
    """Body of a fixture: an in-process hub with a firmware repository, disposed afterwards."""
    parts = make_hub(tmp_path)
    try:
        yield hub_firmware(parts)
    finally:
        parts.store.engine.dispose()
