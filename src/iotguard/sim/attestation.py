"""Measured boot and attestation for simulated devices (the demo, tests).

A :class:`FleetFirmware` is a simulated vendor: an Ed25519 firmware signing
key and one signed release (the image set of :mod:`iotguard.agent.images`).
It registers the release's measurements and an appraisal policy with the
hub's attestation service. :func:`boot_and_attest` runs an agent's measured
boot on its key store's root of trust and attests to the hub through the
device plane; :meth:`FleetFirmware.tampered` gives a copy of the release with
an implanted kernel, for a device whose secure boot is bypassed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.agent import Agent
from iotguard.agent.attester import Attester
from iotguard.agent.boot import MeasuredBoot, provision_boot_anchor
from iotguard.agent.images import build_image_set
from iotguard.attestation import reference_release
from iotguard.hub.services.attestation import AttestationService
from iotguard.keys.rot import root_of_trust_of
from iotguard.keys.software_rot import SoftwareRootOfTrust

__all__ = ["DEMO_APPRAISAL_POLICY", "FleetFirmware", "boot_and_attest"]

#: Appraisal policy of a simulated model (``{model}`` filled in): every stage measured and matched.
DEMO_APPRAISAL_POLICY = """
[models.{model}]
max_age_seconds = 300
stages = {{ bootloader = 0, kernel = 4, application = 10, privacy-configuration = 11 }}
executables = ["bootloader", "kernel", "application"]
configuration = ["privacy-configuration"]
hardware_affirming = ["tpm2", "software"]

[models.{model}.claims]
instance-identity = "required"
executables = "required"
configuration = "required"
hardware = "required"
"""


class FleetFirmware:
    """A simulated vendor's signing key and one signed release in ``directory``."""

    def __init__(self, directory: Path, version: str = "1.0.0") -> None:
        self.key = Ed25519PrivateKey.generate()
        self.version = version
        self.images = directory / version
        self.digests = build_image_set(self.images, self.key.sign, version)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes_raw()

    def register(self, attestation: AttestationService, models: Iterable[str]) -> None:
        """Allow the release and set the demo appraisal policy for each model."""
        for model in sorted(set(models)):
            attestation.add_reference(reference_release(model, self.version, self.digests))
            attestation.set_policy(model, DEMO_APPRAISAL_POLICY.format(model=model))

    def tampered(self, directory: Path, stage: str = "kernel") -> Path:
        """A copy of the release with an implant appended to ``stage``'s image (its signature no longer fits)."""
        target = Path(shutil.copytree(self.images, directory))
        image = target / f"{stage}.img"
        image.write_bytes(image.read_bytes() + b"\x00implant")
        return target


def boot_and_attest(agent: Agent, images: Path, firmware_public_key: bytes, *,
                    unsafe_allow_unverified: bool = False) -> dict[str, Any]:
    """Power-cycle, measured boot of ``images`` on the agent's root of trust, then attest to the hub.

    The agent keeps the :class:`Attester` (``agent.attester``) to answer the hub's challenges.

    Raises:
        RootOfTrustUnsupported: the agent's key store cannot attest.
        SecureBootError: a stage was refused (secure boot on).
        EnrollmentError: the hub refused a request.
    """
    root = root_of_trust_of(agent.keystore)
    if isinstance(root, SoftwareRootOfTrust):
        root.power_cycle()
    anchor = provision_boot_anchor(agent.keystore, firmware_public_key)
    record = MeasuredBoot(agent.keystore, root, anchor, unsafe_allow_unverified=unsafe_allow_unverified).boot(images)
    agent.attester = Attester(root, record)
    return agent.attest(agent.attester)
