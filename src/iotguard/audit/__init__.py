"""Tamper-evident audit log: an RFC 9162 Merkle log of security and privacy events.

Components record :class:`AuditEvent` objects through an :class:`AuditSink`
(in the hub, a :class:`TransparencyLog` over ``iotguard.hub.audit_store``).
The log publishes C2SP signed checkpoints, serves inclusion and consistency
proofs from stored subtree hashes, and can be verified offline
(:func:`verify_export`), monitored (:class:`Monitor`), witnessed
(:class:`Witness`) and anchored (:class:`Anchor`).
"""

from iotguard.audit.anchor import Anchor, AnchorReceipt, CheckpointSchedule, LogAnchor, ScheduleResult
from iotguard.audit.events import AuditEvent, EventType, rejected_envelopes
from iotguard.audit.log import (
    AuditSink,
    LeafRecord,
    LogStore,
    MemoryAuditSink,
    MemoryLogStore,
    TransparencyLog,
)
from iotguard.audit.monitor import (
    Alert,
    AlertKind,
    LocalLogSource,
    LogSource,
    Monitor,
    MonitorState,
    PollResult,
)
from iotguard.audit.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    Checkpoint,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    open_note,
    sign_checkpoint,
)
from iotguard.audit.provenance import (
    ChainOfCustody,
    CustodyLink,
    manufacturing_record,
    provenance,
    verify_chain_of_custody,
)
from iotguard.audit.tree import CompactRange, HashReader, StoredTree
from iotguard.audit.verify import (
    ExportBundle,
    InclusionBundle,
    VerifiedSegment,
    export_segment,
    inclusion_bundle,
    verify_export,
    verify_inclusion_bundle,
)
from iotguard.audit.witness import TreeHead, Witness, WitnessStateStore, verify_cosigned

__all__ = [
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "Alert",
    "AlertKind",
    "Anchor",
    "AnchorReceipt",
    "AuditEvent",
    "AuditSink",
    "ChainOfCustody",
    "Checkpoint",
    "CheckpointSchedule",
    "CompactRange",
    "CustodyLink",
    "EventType",
    "ExportBundle",
    "HashReader",
    "InclusionBundle",
    "LeafRecord",
    "LocalLogSource",
    "LogAnchor",
    "LogSource",
    "LogStore",
    "MemoryAuditSink",
    "MemoryLogStore",
    "Monitor",
    "MonitorState",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "PollResult",
    "ScheduleResult",
    "StoredTree",
    "TransparencyLog",
    "TreeHead",
    "VerifiedSegment",
    "Witness",
    "WitnessStateStore",
    "export_segment",
    "inclusion_bundle",
    "manufacturing_record",
    "open_checkpoint",
    "open_note",
    "provenance",
    "rejected_envelopes",
    "sign_checkpoint",
    "verify_chain_of_custody",
    "verify_cosigned",
    "verify_export",
    "verify_inclusion_bundle",
]
