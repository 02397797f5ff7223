"""The agent's side of remote attestation: signed ``attest`` request bodies from a measured boot.

An :class:`Attester` holds the root of trust that measured the boot and the
:class:`~iotguard.agent.boot.BootRecord` of that boot. A TPM's attestation key
is first certified against the TPM's endorsement key (:meth:`Attester.certify`,
credential activation). The agent asks the hub
for a nonce (:meth:`Attester.nonce_request`), or receives one in a challenge,
and answers with :meth:`Attester.evidence_body`: the EAT evidence for that
nonce and the attestation key that signed it. Both bodies travel as signed
device requests (action ``attest``), so attestation works from behind NAT.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from iotguard.agent.boot import BootRecord, MeasuredBoot, provision_boot_anchor
from iotguard.agent.evidence import produce_evidence
from iotguard.clock import Clock, SystemClock
from iotguard.config import AgentConfig
from iotguard.errors import ConfigError, MalformedError, RootOfTrustUnsupported
from iotguard.fileio import atomic_write
from iotguard.keys import KeyStore
from iotguard.keys.rot import EndorsedRootOfTrust, RootOfTrust, root_of_trust_of
from iotguard.keys.software_rot import SoftwareRootOfTrust

__all__ = ["ANCHOR_FILE", "Attester", "boot_from_config"]

#: The sealed boot anchor, in the agent's data directory.
ANCHOR_FILE = "boot-anchor.sealed"


class Attester:
    """Evidence for the hub's nonces, from one measured boot.

    Args:
        root: The root of trust that measured the boot (software or TPM).
        record: The boot's record (event log, firmware version).
        clock: Time source of the evidence's issue time.
    """

    def __init__(self, root: RootOfTrust, record: BootRecord, clock: Clock | None = None) -> None:
        self.root = root
        self.record = record
        self.clock = clock or SystemClock()
        self._started = time.monotonic()
        #: The TPM's AK has been certified with the hub in this run (software roots need none).
        self.certified = False

    @property
    def needs_certification(self) -> bool:
        """True until a TPM's attestation key has been certified against its EK in this run."""
        return isinstance(self.root, EndorsedRootOfTrust) and not self.certified

    def certify(self, post: Callable[[dict[str, Any]], Mapping[str, Any]]) -> None:
        """Certify the TPM's AK with the hub: ask for a credential, activate it in the TPM, answer with the secret.

        Args:
            post: Sends one ``certify_ak`` request body (signed) and returns the hub's reply.

        Raises:
            RootOfTrustUnsupported: the root of trust has no endorsement key.
            KeyStoreError: the TPM could not activate the credential (not made for its EK and AK).
            MalformedError: the hub's reply is not a credential.
        """
        root = self.root
        if not isinstance(root, EndorsedRootOfTrust):
            raise RootOfTrustUnsupported(f"{root.kind} root of trust has no endorsement key")
        area = root.attestation_key_public_area()
        # The manufacturer's EK certificate as the TPM holds it in NV (ADR 0815); the hub checks its chain.
        reply = post({"ak_public_area": area, "secret": b"", "ek_certificate": root.endorsement_certificate()})
        try:
            blob = bytes.fromhex(str(reply["credential_blob"]))
            encrypted = bytes.fromhex(str(reply["encrypted_secret"]))
        except (KeyError, ValueError):
            raise MalformedError("the hub's answer is not a credential") from None
        post({"ak_public_area": area, "secret": root.activate_credential(blob, encrypted), "ek_certificate": b""})
        self.certified = True

    @staticmethod
    def nonce_request() -> dict[str, Any]:
        """The body of an ``attest`` request asking for a nonce."""
        return {"nonce": b"", "evidence": b"", "attestation_key": b"", "algorithm": ""}

    def evidence_body(self, nonce: bytes) -> dict[str, Any]:
        """The body of an ``attest`` request answering ``nonce``: the evidence and its attestation key."""
        token = produce_evidence(self.root, self.record, nonce, now=self.clock.now(),
                                 uptime=int(time.monotonic() - self._started))
        ak = self.root.attestation_key()
        return {"nonce": nonce, "evidence": token, "attestation_key": ak.public_key, "algorithm": ak.algorithm.value}


def boot_from_config(cfg: AgentConfig, keystore: KeyStore) -> Attester:
    """Measured (and secure) boot of ``cfg.boot_images_dir`` on the configured root of trust.

    The root is the key store's (software) unless ``cfg.tpm_tcti`` names a TPM.
    ``cfg.unsafe_allow_unverified_boot`` runs stages that fail verification
    (measured all the same; :class:`MeasuredBoot` logs the bypass loudly).
    The boot anchor is sealed from ``cfg.firmware_public_key`` at the first
    start and kept in ``<data_dir>/boot-anchor.sealed``; later starts use the
    sealed one (changing the configured key does not change the anchor).

    Raises:
        ConfigError: no images directory, or no anchor and no firmware key.
        SecureBootError: a stage failed verification (it did not run).
        RootOfTrustUnsupported: the key store cannot attest and no TPM is configured.
    """
    if not cfg.boot_images_dir:
        raise ConfigError("agent.boot_images_dir is not set")
    anchor_path = Path(cfg.data_dir) / ANCHOR_FILE
    if anchor_path.exists():
        anchor = anchor_path.read_bytes()
    else:
        try:
            key = bytes.fromhex(cfg.firmware_public_key)
        except ValueError:
            raise ConfigError("agent.firmware_public_key must be hex") from None
        if not key:
            raise ConfigError("agent.firmware_public_key is needed at the first start (boot anchor)")
        anchor = provision_boot_anchor(keystore, key)
        atomic_write(anchor_path, anchor)
    if cfg.tpm_tcti:
        from iotguard.keys.tpm import TpmRootOfTrust

        root: RootOfTrust = TpmRootOfTrust(Path(cfg.data_dir) / "tpm", tcti=cfg.tpm_tcti)
    else:
        root = root_of_trust_of(keystore)
        if isinstance(root, SoftwareRootOfTrust):
            root.power_cycle()  # the agent's start is the emulated platform's reset
    record = MeasuredBoot(keystore, root, anchor,
                          unsafe_allow_unverified=cfg.unsafe_allow_unverified_boot).boot(cfg.boot_images_dir)
    return Attester(root, record)
