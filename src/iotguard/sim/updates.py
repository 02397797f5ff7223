"""Firmware releases rolled out to a simulated fleet (``iotguard demo --update``, ``bench/update.py``).

The hub's TUF repository is created with offline keys generated for the
run; each device gets an A/B firmware update client whose fetcher is the
agent's device channel (signed ``update_fetch`` requests over HTTPS against
the fleet CA) and checks in with signed ``update_check`` requests. A release
can be marked broken: its self-test fails on the device, which rolls back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

from securesystemslib.signer import CryptoSigner

from iotguard.agent.firmware import FirmwareUpdateClient
from iotguard.agent.slots import BootedSlot
from iotguard.agent.update_channel import REPOSITORY_URL, UpdateCheckIn, device_update_channel, update_round
from iotguard.rollout import DEFAULT_STAGES, RolloutCampaign, RolloutState
from iotguard.updates import FirmwareRelease

if TYPE_CHECKING:
    from iotguard.agent import Agent
    from iotguard.hub.compose import HubServices

__all__ = ["FleetUpdate", "RolloutProgress", "firmware_image"]

#: Lifecycle facts of the simulated releases.
DEMO_END_OF_SUPPORT = date(2031, 12, 31)
DEMO_CONTACT = "https://iotguard.example/security"


def firmware_image(model: str, version: int, size: int, *, broken: bool = False) -> bytes:
    """A deterministic image of ``size`` bytes; a broken one carries a marker its self-test refuses."""
    header = f"{model} firmware {version}{' broken' if broken else ''}\n".encode()
    return header + hashlib.shake_256(header).digest(max(0, size - len(header)))


def _self_test(_slot: BootedSlot, image: bytes) -> None:
    if b" broken\n" in image[:128]:
        raise RuntimeError("self-test: application did not come up")


@dataclass(frozen=True)
class RolloutProgress:
    """One round of a rollout: where the campaign is and what the devices did."""

    round: int
    stage: int
    stages: int
    percent: float
    state: str
    reason: str
    updated: int
    rolled_back: int


@dataclass
class FleetUpdate:
    """Offline keys, the hub's repository and one update client per simulated device."""

    services: HubServices
    root: bytes
    targets: CryptoSigner
    model_keys: dict[str, CryptoSigner]
    clients: dict[str, tuple[str, FirmwareUpdateClient, UpdateCheckIn]] = field(default_factory=dict)

    @classmethod
    def create(cls, services: HubServices, models: Sequence[str]) -> FleetUpdate:
        """Create the hub's repository (2-of-3 root keys generated for the run) and delegate ``models``."""
        roots = [CryptoSigner.generate_ed25519() for _ in range(3)]
        targets = CryptoSigner.generate_ed25519()
        root = services.firmware.initialise(root_signers=roots, root_threshold=2, targets_signer=targets,
                                            actor="demo")
        keys = {m: CryptoSigner.generate_ed25519() for m in sorted(set(models))}
        for model, key in keys.items():
            services.firmware.add_model(model, model_signer=key, targets_signer=targets, actor="demo")
        return cls(services, root, targets, keys)

    def attach(self, agent: Agent, model: str, *, factory_version: int = 1, image_size: int = 1024) -> None:
        """Give an enrolled agent an update client trusting the repository's root, factory firmware installed."""
        fetcher, check_in = device_update_channel(agent)
        FirmwareUpdateClient.trust(agent.dir, self.root)
        client = FirmwareUpdateClient(agent.dir, model=model, counters=agent.keystore, fetcher=fetcher,
                                      base_url=REPOSITORY_URL, self_test=_self_test)
        if not client.slots.provisioned():
            client.slots.provision(firmware_image(model, factory_version, image_size), factory_version)
        self.clients[agent.device_id] = (model, client, check_in)

    def publish(self, model: str, version: int, *, size: int, broken: bool = False) -> FirmwareRelease:
        """Sign and publish a release (its measurement becomes a reference value)."""
        data = firmware_image(model, version, size, broken=broken)
        release = FirmwareRelease.for_image(model, version, data, end_of_support=DEMO_END_OF_SUPPORT,
                                            disclosure_contact=DEMO_CONTACT,
                                            measurements={"app": hashlib.sha256(data).hexdigest()})
        self.services.firmware.publish(release, data, model_signer=self.model_keys[model], actor="demo")
        return release

    def roll_out(self, model: str, version: int, *, stages: Sequence[float] = DEFAULT_STAGES,
                 max_rounds: int = 12, on_round: Callable[[RolloutProgress], None] | None = None
                 ) -> RolloutCampaign:
        """Start a campaign and run rounds (every device checks in, the hub evaluates its gates) until it ends."""
        rollouts = self.services.rollouts
        campaign = rollouts.start(model, version, actor="demo", stages=stages)
        updated = rolled_back = 0
        for n in range(1, max_rounds + 1):
            for device_model, client, check_in in self.clients.values():
                if device_model != model:
                    continue
                outcome = update_round(client, check_in).outcome
                updated += outcome == "committed"
                rolled_back += outcome == "rolled_back"
            current = rollouts.store.get(campaign.rollout_id)
            if current.state is RolloutState.RUNNING:
                (current,) = [c for c in rollouts.tick() if c.rollout_id == campaign.rollout_id]
            if on_round is not None:
                on_round(RolloutProgress(n, current.stage + 1, len(current.stages), current.percent,
                                         str(current.state), current.reason, updated, rolled_back))
            if not current.active:
                return current
        return rollouts.store.get(campaign.rollout_id)

    def versions(self) -> dict[int, int]:
        """How many devices run each committed version."""
        out: dict[int, int] = {}
        for _m, client, _c in self.clients.values():
            v = client.slots.active().version
            out[v] = out.get(v, 0) + 1
        return dict(sorted(out.items()))
