"""Device provenance: the manufacturing record and a device's chain of custody.

The maker records a device's manufacturing record (model, serial, firmware,
identity public key, optional PUF enrollment digest) as an audit entry
whose subject is the device id. Every later event about the device
(enrollment, certificates, attestation, quarantine, firmware installs...)
uses the same subject, so the chain of custody is the list of those entries,
each with an inclusion proof against one signed checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from iotguard.audit.events import AuditEvent, EventType
from iotguard.audit.log import MAX_ENTRIES_PER_READ, TransparencyLog
from iotguard.audit.note import NoteVerifier, open_checkpoint
from iotguard.audit.verify import InclusionBundle, inclusion_bundle, verify_inclusion_bundle
from iotguard.errors import ProofError

__all__ = ["ChainOfCustody", "CustodyLink", "manufacturing_record", "provenance", "verify_chain_of_custody"]


def manufacturing_record(
    device_id: str,
    *,
    model: str,
    serial: str,
    firmware: str,
    public_key: bytes,
    made_at: datetime,
    maker: str = "manufacturer",
    puf_enrollment: bytes | None = None,
) -> AuditEvent:
    """The audit event recording how a device left the factory.

    Only a digest of the PUF enrollment (helper data) is logged, never the
    helper data itself.
    """
    details: dict[str, object] = {
        "model": model,
        "serial": serial,
        "firmware": firmware,
        "public_key": public_key,
    }
    if puf_enrollment is not None:
        details["puf_enrollment_sha256"] = hashlib.sha256(puf_enrollment).digest()
    return AuditEvent(EventType.DEVICE_MANUFACTURED, made_at, maker, device_id, details)


@dataclass(frozen=True)
class CustodyLink:
    """One event of a device's history with its inclusion proof."""

    index: int
    event: AuditEvent
    bundle: InclusionBundle


@dataclass(frozen=True)
class ChainOfCustody:
    """A device's events, all proven against one checkpoint."""

    device_id: str
    checkpoint: str
    links: list[CustodyLink]


def provenance(log: TransparencyLog, device_id: str, checkpoint: str | None = None) -> ChainOfCustody:
    """Chain of custody of ``device_id``: its entries with inclusion proofs.

    Args:
        log: The audit log.
        device_id: The subject to look up.
        checkpoint: Prove against this checkpoint; by default a checkpoint
            covering the whole log is published on demand.

    Raises:
        ProofError: the checkpoint does not belong to the log.
    """
    note = checkpoint or log.publish_checkpoint()
    cp = log.verify_checkpoint(note)
    links: list[CustodyLink] = []
    for index in log.find_subject(device_id, MAX_ENTRIES_PER_READ):
        if index >= cp.size:
            break
        bundle = inclusion_bundle(log, index, note)
        links.append(CustodyLink(index, AuditEvent.from_cbor(bundle.entry), bundle))
    return ChainOfCustody(device_id, note, links)


def verify_chain_of_custody(chain: ChainOfCustody, log_key: NoteVerifier) -> list[AuditEvent]:
    """Verify every link offline; return the events in log order.

    Raises:
        ProofError: a proof fails, a link is about another device, or the
            links are not all proven against the chain's checkpoint.
    """
    open_checkpoint(chain.checkpoint, log_key)
    events: list[AuditEvent] = []
    last = -1
    for link in chain.links:
        if (
            link.bundle.checkpoint != chain.checkpoint
            or link.bundle.index != link.index
            or link.index <= last
        ):
            raise ProofError("chain of custody links are inconsistent")
        event = verify_inclusion_bundle(link.bundle, log_key)
        if event.subject != chain.device_id or event != link.event:
            raise ProofError("chain of custody holds another device's entry")
        events.append(event)
        last = link.index
    return events
