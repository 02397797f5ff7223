"""Tamper-evident audit log: an RFC 9162 Merkle log of security and privacy events.

Components record :class:`AuditEvent` objects through an :class:`AuditSink`
(in the hub, a :class:`TransparencyLog` over ``iotguard.hub.audit_store``).
The log publishes C2SP signed checkpoints, serves inclusion and consistency
proofs from stored subtree hashes, and can be verified offline
(:func:`verify_export`), monitored (:class:`Monitor`), witnessed
(:class:`Witness`, over the C2SP tlog-witness protocol with k-of-n
cosigning) and anchored (:class:`Anchor`, including an EVM chain with
offline :class:`AnchorProof`); device custody is signed by each party
(:class:`CustodyStatement`).
"""

from iotguard.audit.anchor import Anchor, AnchorReceipt, CheckpointSchedule, LogAnchor, ScheduleResult
from iotguard.audit.chain import (
    AnchoredCheckpoint,
    AnchorProof,
    verify_anchor_proof,
    verify_consistent_with_anchor,
)
from iotguard.audit.custody import (
    CustodyRole,
    CustodyStatement,
    Party,
    sign_custody_statement,
    verify_custody_chain,
)
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
from iotguard.audit.witness_protocol import (
    CosignedCheckpoint,
    WitnessEndpoint,
    collect_cosignatures,
    detect_split_view,
    handle_add_checkpoint,
)

__all__ = [
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "Alert",
    "AlertKind",
    "Anchor",
    "AnchorProof",
    "AnchorReceipt",
    "AnchoredCheckpoint",
    "AuditEvent",
    "AuditSink",
    "ChainOfCustody",
    "Checkpoint",
    "CheckpointSchedule",
    "CompactRange",
    "CosignedCheckpoint",
    "CustodyLink",
    "CustodyRole",
    "CustodyStatement",
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
    "Party",
    "PollResult",
    "ScheduleResult",
    "StoredTree",
    "TransparencyLog",
    "TreeHead",
    "VerifiedSegment",
    "Witness",
    "WitnessEndpoint",
    "WitnessStateStore",
    "collect_cosignatures",
    "detect_split_view",
    "export_segment",
    "handle_add_checkpoint",
    "inclusion_bundle",
    "manufacturing_record",
    "open_checkpoint",
    "open_note",
    "provenance",
    "rejected_envelopes",
    "sign_checkpoint",
    "sign_custody_statement",
    "verify_anchor_proof",
    "verify_chain_of_custody",
    "verify_consistent_with_anchor",
    "verify_cosigned",
    "verify_custody_chain",
    "verify_export",
    "verify_inclusion_bundle",
]
