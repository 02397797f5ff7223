"""Offline verification: exported log segments and inclusion proofs.

An auditor needs only the log's verifier key. An *export* carries a signed
checkpoint of size N, a segment of entries ``[start, end)``, the compact
range of ``[0, start)`` and a consistency proof from ``end`` to N. The
verifier folds the segment into the compact range, which yields the root of
the tree of ``end`` entries; the consistency proof then ties that root to
the signed root of N. Because a tree root commits to every leaf and its
position, any modified, dropped, inserted or reordered entry changes the
root and fails the check.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from iotguard.audit.events import AuditEvent
from iotguard.audit.log import MAX_ENTRIES_PER_READ, TransparencyLog
from iotguard.audit.merkle import HASH_SIZE, leaf_hash, verify_consistency, verify_inclusion
from iotguard.audit.note import Checkpoint, NoteVerifier, open_checkpoint
from iotguard.audit.tree import CompactRange, integrate
from iotguard.errors import MalformedError, ProofError, RollbackError, StorageError

__all__ = [
    "EXPORT_FORMAT",
    "INCLUSION_FORMAT",
    "MAX_EXPORT_BYTES",
    "ExportBundle",
    "InclusionBundle",
    "VerifiedSegment",
    "export_segment",
    "inclusion_bundle",
    "verify_export",
    "verify_inclusion_bundle",
]

EXPORT_FORMAT = "iotguard-audit-export/1"
INCLUSION_FORMAT = "iotguard-audit-inclusion/1"
#: Largest export file the verifier reads.
MAX_EXPORT_BYTES = 512 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedError(f"{what} is not valid base64") from None


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise MalformedError(f"{what} must be a list")
    out = [_unb64(v, what) for v in value]
    if any(len(h) != HASH_SIZE for h in out):
        raise MalformedError(f"{what} holds a hash of the wrong size")
    return out


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedError(f"{what} must be a non-negative integer")
    return value


def _prior_size(key: Any) -> int:
    if not isinstance(key, str) or not key.isdigit() or len(key) > 20:
        raise MalformedError("prior proof sizes must be decimal")
    return int(key)


@dataclass(frozen=True)
class ExportBundle:
    """A log segment with what is needed to verify it offline."""

    checkpoint: str
    start: int
    entries: list[bytes]
    left: list[bytes]
    consistency: list[bytes]
    prior_proofs: dict[int, list[bytes]] = field(default_factory=dict)

    @property
    def end(self) -> int:
        """One past the last entry's index."""
        return self.start + len(self.entries)

    def to_json(self) -> str:
        """Serialise (JSON, base64 for bytes)."""
        return json.dumps(
            {
                "format": EXPORT_FORMAT,
                "checkpoint": self.checkpoint,
                "start": self.start,
                "end": self.end,
                "left": [_b64(h) for h in self.left],
                "entries": [_b64(e) for e in self.entries],
                "consistency": [_b64(h) for h in self.consistency],
                "prior_proofs": {str(k): [_b64(h) for h in v] for k, v in self.prior_proofs.items()},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ExportBundle:
        """Parse an export strictly.

        Raises:
            MalformedError: not a well-formed export.
        """
        if len(text) > MAX_EXPORT_BYTES:
            raise MalformedError("export is too large")
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError):
            raise MalformedError("export is not JSON") from None
        if not isinstance(raw, dict) or raw.get("format") != EXPORT_FORMAT:
            raise MalformedError("not an iotguard audit export")
        if not isinstance(raw.get("checkpoint"), str) or not isinstance(raw.get("entries"), list):
            raise MalformedError("export lacks its checkpoint or entries")
        start = _int(raw.get("start"), "start")
        entries = [_unb64(e, "entry") for e in raw["entries"]]
        if _int(raw.get("end"), "end") != start + len(entries):
            raise MalformedError("export end does not match its entries")
        prior = raw.get("prior_proofs", {})
        if not isinstance(prior, dict):
            raise MalformedError("prior_proofs must be a map")
        return cls(
            raw["checkpoint"],
            start,
            entries,
            _hashes(raw.get("left"), "left"),
            _hashes(raw.get("consistency"), "consistency"),
            {_prior_size(k): _hashes(v, "prior proof") for k, v in prior.items()},
        )


@dataclass(frozen=True)
class VerifiedSegment:
    """The result of a successful export verification."""

    checkpoint: Checkpoint
    start: int
    events: list[AuditEvent]


def export_segment(
    log: TransparencyLog, start: int, end: int, checkpoint: str, prove_from: tuple[int, ...] = ()
) -> ExportBundle:
    """Build an export of entries ``[start, end)`` against a published checkpoint.

    Args:
        log: The log.
        start: First entry.
        end: One past the last entry (at most the checkpoint size).
        checkpoint: A checkpoint note of this log, of size >= ``end``.
        prove_from: Older tree sizes an auditor already trusts; the export
            carries a consistency proof from each to the checkpoint.

    Raises:
        ProofError: the range or checkpoint does not fit the log.
    """
    cp = log.verify_checkpoint(checkpoint)
    if not 0 <= start <= end <= cp.size:
        raise ProofError("segment is not inside the checkpoint")
    entries: list[bytes] = []
    for i in range(start, end, MAX_ENTRIES_PER_READ):
        entries.extend(log.entries(i, min(end, i + MAX_ENTRIES_PER_READ)))
    consistency = log.consistency_proof(end, cp.size) if end > 0 else []
    prior = {size: log.consistency_proof(size, cp.size) for size in prove_from if 0 < size <= cp.size}
    return ExportBundle(checkpoint, start, entries, list(log.compact_range(start).hashes), consistency, prior)


def verify_export(
    bundle: ExportBundle, log_key: NoteVerifier, trusted_checkpoint: str | None = None
) -> VerifiedSegment:
    """Verify an export offline with only the log's key.

    Args:
        bundle: The export.
        log_key: The log's verifier key.
        trusted_checkpoint: A checkpoint the auditor saw earlier; the export's
            checkpoint must not be older and must be consistent with it.

    Raises:
        ProofError: a signature, root or proof does not verify, or an entry
            was modified, dropped, inserted or reordered.
        RollbackError: the export's checkpoint is older than the trusted one.
        MalformedError: the export or an entry does not parse.
    """
    cp, _ = open_checkpoint(bundle.checkpoint, log_key)
    if bundle.end > cp.size:
        raise ProofError("segment extends beyond the checkpoint")
    try:
        left = CompactRange(bundle.start, tuple(bundle.left))
    except StorageError:
        raise ProofError("left edge does not match the segment start") from None
    events = [AuditEvent.from_cbor(e) for e in bundle.entries]
    hashes = [leaf_hash(e) for e in bundle.entries]
    compact, _ = integrate(left, hashes)
    if bundle.end == 0:
        if cp.size == 0 and cp.root != compact.root():
            raise ProofError("empty log has the wrong root")
    else:
        verify_consistency(bundle.end, cp.size, compact.root(), cp.root, bundle.consistency)
    if trusted_checkpoint is not None:
        _check_trusted(bundle, cp, left, hashes, log_key, trusted_checkpoint)
    return VerifiedSegment(cp, bundle.start, events)


def _check_trusted(
    bundle: ExportBundle,
    cp: Checkpoint,
    left: CompactRange,
    hashes: list[bytes],
    log_key: NoteVerifier,
    trusted_checkpoint: str,
) -> None:
    trusted, _ = open_checkpoint(trusted_checkpoint, log_key)
    if trusted.size > cp.size:
        raise RollbackError("export checkpoint is older than the trusted checkpoint")
    if bundle.start <= trusted.size <= bundle.end:
        at_trusted, _ = integrate(left, hashes[: trusted.size - bundle.start])
        if at_trusted.root() != trusted.root:
            raise ProofError("the log forked since the trusted checkpoint")
        return
    proof = bundle.prior_proofs.get(trusted.size)
    if proof is None:
        raise ProofError("export carries no proof from the trusted checkpoint's size")
    verify_consistency(trusted.size, cp.size, trusted.root, cp.root, proof)


@dataclass(frozen=True)
class InclusionBundle:
    """One entry, its inclusion proof, and the checkpoint it is proven against."""

    checkpoint: str
    index: int
    entry: bytes
    proof: list[bytes]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "format": INCLUSION_FORMAT,
            "checkpoint": self.checkpoint,
            "index": self.index,
            "entry": _b64(self.entry),
            "leaf_hash": _b64(leaf_hash(self.entry)),
            "proof": [_b64(h) for h in self.proof],
        }

    @classmethod
    def from_dict(cls, raw: Any) -> InclusionBundle:
        """Parse the JSON form strictly.

        Raises:
            MalformedError: not a well-formed inclusion bundle.
        """
        if not isinstance(raw, dict) or raw.get("format") != INCLUSION_FORMAT:
            raise MalformedError("not an iotguard inclusion proof")
        if not isinstance(raw.get("checkpoint"), str):
            raise MalformedError("inclusion proof lacks its checkpoint")
        return cls(
            raw["checkpoint"],
            _int(raw.get("index"), "index"),
            _unb64(raw.get("entry"), "entry"),
            _hashes(raw.get("proof"), "proof"),
        )


def inclusion_bundle(log: TransparencyLog, index: int, checkpoint: str) -> InclusionBundle:
    """Prove entry ``index`` against a published checkpoint.

    Raises:
        ProofError: the entry is not in the checkpoint's tree.
    """
    cp = log.verify_checkpoint(checkpoint)
    return InclusionBundle(
        checkpoint, index, log.entries(index, index + 1)[0], log.inclusion_proof(index, cp.size)
    )


def verify_inclusion_bundle(bundle: InclusionBundle, log_key: NoteVerifier) -> AuditEvent:
    """Verify an inclusion bundle offline; return the proven event.

    Raises:
        ProofError: the checkpoint or the proof does not verify.
        MalformedError: the entry does not parse.
    """
    cp, _ = open_checkpoint(bundle.checkpoint, log_key)
    verify_inclusion(leaf_hash(bundle.entry), bundle.index, cp.size, bundle.proof, cp.root)
    return AuditEvent.from_cbor(bundle.entry)
