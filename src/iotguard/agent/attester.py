"""The agent's side of remote attestation: signed ``attest`` request bodies from a measured boot.

An :class:`Attester` holds the root of trust that measured the boot and the
:class:`~iotguard.agent.boot.BootRecord` of that boot. The agent asks the hub
for a nonce (:meth:`Attester.nonce_request`), or receives one in a challenge,
and answers with :meth:`Attester.evidence_body`: the EAT evidence for that
nonce and the attestation key that signed it. Both bodies travel as signed
device requests (action ``attest``), so attestation works from behind NAT.
"""

from __future__ import annotations

import time
from typing import Any

from iotguard.agent.boot import BootRecord
from iotguard.agent.evidence import produce_evidence
from iotguard.clock import Clock, SystemClock
from iotguard.keys.rot import RootOfTrust

__all__ = ["Attester"]


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
