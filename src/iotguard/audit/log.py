"""The transparency log: one sequenced, append-only Merkle log of audit events.

:class:`TransparencyLog` is what components write to (it is an
:class:`AuditSink`) and what the API, the CLI and the monitor read from. It
keeps no state of its own: persistence goes through a :class:`LogStore`
(``iotguard.hub.audit_store.SqlLogStore`` in the hub, :class:`MemoryLogStore`
in tests), which must sequence appends so that the log has exactly one order
even with several writer processes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from iotguard.audit.events import AuditEvent
from iotguard.audit.merkle import leaf_hash
from iotguard.audit.note import Checkpoint, NoteSigner, NoteVerifier, open_checkpoint, sign_checkpoint
from iotguard.audit.tree import CompactRange, NodeKey, StoredTree, integrate
from iotguard.clock import Clock, SystemClock
from iotguard.errors import ProofError

__all__ = [
    "MAX_APPEND_BATCH",
    "MAX_ENTRIES_PER_READ",
    "AuditSink",
    "LeafRecord",
    "LogStore",
    "MemoryAuditSink",
    "MemoryLogStore",
    "TransparencyLog",
]

#: Most events sequenced in one durable transaction.
MAX_APPEND_BATCH = 10_000
#: Most entries returned by one read (export, API page, monitor fetch).
MAX_ENTRIES_PER_READ = 10_000


@runtime_checkable
class AuditSink(Protocol):
    """The one interface every component records audit events through."""

    def record(self, event: AuditEvent) -> None:
        """Durably log one event.

        Raises:
            StorageError: the event could not be stored.
        """
        ...

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        """Durably log several events in one batch, in order."""
        ...


class MemoryAuditSink:
    """An :class:`AuditSink` that keeps events in a list (unit tests of other components)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self._lock = threading.Lock()

    def record(self, event: AuditEvent) -> None:
        event.to_cbor()  # fail like the real log on events it could not encode
        with self._lock:
            self.events.append(event)

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        for event in events:
            event.to_cbor()
        with self._lock:
            self.events.extend(events)


@dataclass(frozen=True)
class LeafRecord:
    """A leaf ready to be sequenced: its bytes, hash and index columns."""

    data: bytes
    leaf_hash: bytes
    event_type: str
    subject: str

    @classmethod
    def from_event(cls, event: AuditEvent) -> LeafRecord:
        """Encode and hash an event."""
        data = event.to_cbor()
        return cls(data, leaf_hash(data), str(event.type), event.subject)


class LogStore(Protocol):
    """Persistence of one log (structural protocol; see ``SqlLogStore``).

    ``append`` is the sequencer: it must, atomically and durably, read the
    current compact range, :func:`~iotguard.audit.tree.integrate` the
    leaves, write entries, new nodes and the new compact range, and make
    concurrent appenders (threads or processes) wait their turn.
    """

    def append(self, leaves: Sequence[LeafRecord]) -> int:
        """Sequence and store leaves; return the index of the first one."""
        ...

    def head(self) -> CompactRange:
        """The compact range of the current tree."""
        ...

    def read_hashes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        """Stored node hashes (level 0 = leaf hashes)."""
        ...

    def read_entries(self, start: int, end: int) -> list[bytes]:
        """Leaf data of entries ``start..end-1``."""
        ...

    def find_subject(self, subject: str, limit: int) -> list[int]:
        """Indexes of the entries about ``subject``, ascending, at most ``limit``."""
        ...

    def save_checkpoint(self, size: int, note: str) -> None:
        """Keep a published checkpoint (one per size; later saves of a size are ignored)."""
        ...

    def checkpoint(self, size: int | None = None) -> str | None:
        """The checkpoint published for ``size`` (latest when None), if any."""
        ...

    def save_final(self, size: int, note: str) -> None:
        """Keep a checkpoint made final by its witnesses' cosignatures (one per size; first save wins)."""
        ...

    def final(self, size: int | None = None) -> str | None:
        """The final (witness-cosigned) checkpoint for ``size`` (latest when None), if any."""
        ...


class MemoryLogStore:
    """A :class:`LogStore` in memory, for tests; sequenced by a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._compact = CompactRange(0)
        self._data: list[bytes] = []
        self._hashes: list[bytes] = []
        self._subjects: list[str] = []
        self._nodes: dict[NodeKey, bytes] = {}
        self._checkpoints: dict[int, str] = {}
        self._finals: dict[int, str] = {}

    def append(self, leaves: Sequence[LeafRecord]) -> int:
        with self._lock:
            first = self._compact.size
            compact, nodes = integrate(self._compact, [leaf.leaf_hash for leaf in leaves])
            for leaf in leaves:
                self._data.append(leaf.data)
                self._hashes.append(leaf.leaf_hash)
                self._subjects.append(leaf.subject)
            self._nodes.update(nodes)
            self._compact = compact
            return first

    def head(self) -> CompactRange:
        with self._lock:
            return self._compact

    def read_hashes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        with self._lock:
            out: dict[NodeKey, bytes] = {}
            for key in keys:
                if key[0] == 0 and key[1] < len(self._hashes):
                    out[key] = self._hashes[key[1]]
                elif key in self._nodes:
                    out[key] = self._nodes[key]
            return out

    def read_entries(self, start: int, end: int) -> list[bytes]:
        with self._lock:
            return self._data[start:end]

    def find_subject(self, subject: str, limit: int) -> list[int]:
        with self._lock:
            return [i for i, s in enumerate(self._subjects) if s == subject][:limit]

    def save_checkpoint(self, size: int, note: str) -> None:
        with self._lock:
            self._checkpoints.setdefault(size, note)

    def checkpoint(self, size: int | None = None) -> str | None:
        with self._lock:
            if size is None:
                return self._checkpoints[max(self._checkpoints)] if self._checkpoints else None
            return self._checkpoints.get(size)

    def save_final(self, size: int, note: str) -> None:
        with self._lock:
            self._finals.setdefault(size, note)

    def final(self, size: int | None = None) -> str | None:
        with self._lock:
            if size is None:
                return self._finals[max(self._finals)] if self._finals else None
            return self._finals.get(size)

    def tamper_leaf(self, index: int, data: bytes) -> None:
        """Test hook: overwrite an entry's stored bytes (not its hash)."""
        with self._lock:
            self._data[index] = data


class TransparencyLog(AuditSink):
    """An RFC 9162 log of audit events with signed checkpoints.

    Args:
        store: Persistence and sequencing.
        signer: Signs checkpoints under the log's origin; None for a
            read-only view (proofs, entries, stored checkpoints only).
        clock: Source of "now" for events the log writes itself.
    """

    def __init__(self, store: LogStore, signer: NoteSigner | None = None, clock: Clock | None = None) -> None:
        self.store = store
        self._signer = signer
        self._tree = StoredTree(store)
        self._clock = clock or SystemClock()

    @property
    def origin(self) -> str:
        """The log's origin (its checkpoint key name).

        Raises:
            ProofError: the log has no signer.
        """
        return self.verifier.name

    @property
    def verifier(self) -> NoteVerifier:
        """The log's verifier key (publish ``verifier.vkey()`` to auditors).

        Raises:
            ProofError: the log has no signer.
        """
        if self._signer is None:
            raise ProofError("this log view has no checkpoint key")
        return self._signer.verifier

    # -- writing -------------------------------------------------------------

    def record(self, event: AuditEvent) -> None:
        """Durably log one event (see :meth:`append`)."""
        self.append([event])

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        """Durably log events in order (see :meth:`append`)."""
        self.append(events)

    def append(self, events: Sequence[AuditEvent]) -> int:
        """Encode, sequence and durably store events; return the first index.

        Large inputs are split into batches of :data:`MAX_APPEND_BATCH`.

        Raises:
            MalformedError: an event cannot be encoded.
            StorageError: the store failed; nothing of that batch is logged.
        """
        records = [LeafRecord.from_event(e) for e in events]
        return self.append_records(records)

    def append_records(self, records: Sequence[LeafRecord]) -> int:
        """Sequence pre-encoded leaves (see :meth:`append`)."""
        first = -1
        for i in range(0, len(records), MAX_APPEND_BATCH):
            index = self.store.append(records[i : i + MAX_APPEND_BATCH])
            if first < 0:
                first = index
        return first if first >= 0 else self.size()

    # -- reading -------------------------------------------------------------

    def size(self) -> int:
        """Number of entries in the log."""
        return self.store.head().size

    def root_hash(self, size: int | None = None) -> bytes:
        """Root hash of the tree of ``size`` entries (current when None).

        Raises:
            ProofError: ``size`` is larger than the log.
        """
        head = self.store.head()
        if size is None or size == head.size:
            return head.root()
        if not 0 <= size <= head.size:
            raise ProofError("no such tree size")
        return self._tree.root_hash(size)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """Inclusion proof of entry ``index`` in the tree of ``tree_size`` entries.

        Raises:
            ProofError: the index or size is outside the log.
        """
        size = self.size()
        tree_size = size if tree_size is None else tree_size
        if tree_size > size:
            raise ProofError("tree size is larger than the log")
        return self._tree.inclusion_proof(index, tree_size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof between two tree sizes.

        Raises:
            ProofError: the sizes are out of order or larger than the log.
        """
        size = self.size()
        new_size = size if new_size is None else new_size
        if new_size > size:
            raise ProofError("tree size is larger than the log")
        return self._tree.consistency_proof(old_size, new_size)

    def compact_range(self, size: int) -> CompactRange:
        """Compact range of the first ``size`` entries (the left edge of an export)."""
        if not 0 <= size <= self.size():
            raise ProofError("no such tree size")
        return self._tree.compact_range(size)

    def leaf_hash(self, index: int) -> bytes:
        """Stored leaf hash of entry ``index``.

        Raises:
            ProofError: no such entry.
        """
        got = self.store.read_hashes([(0, index)])
        if (0, index) not in got:
            raise ProofError("no such entry")
        return got[(0, index)]

    def entries(self, start: int, end: int) -> list[bytes]:
        """Leaf bytes of entries ``start..end-1`` (at most :data:`MAX_ENTRIES_PER_READ`).

        Raises:
            ProofError: the range is empty-inverted, too long or beyond the log.
        """
        if not 0 <= start <= end <= self.size() or end - start > MAX_ENTRIES_PER_READ:
            raise ProofError("entry range out of bounds")
        return self.store.read_entries(start, end)

    def find_subject(self, subject: str, limit: int = MAX_ENTRIES_PER_READ) -> list[int]:
        """Indexes of the entries about ``subject``."""
        return self.store.find_subject(subject, limit)

    # -- checkpoints ---------------------------------------------------------

    def publish_checkpoint(self, now: datetime | None = None) -> str:
        """Sign and store a checkpoint of the current tree (idempotent per size).

        Args:
            now: Unused by the C2SP format (a checkpoint carries no time);
                accepted so schedulers pass their clock uniformly.

        Raises:
            ProofError: the log has no signer.
        """
        if self._signer is None:
            raise ProofError("this log view has no checkpoint key")
        head = self.store.head()
        existing = self.store.checkpoint(head.size)
        if existing is not None:
            return existing
        note = sign_checkpoint(Checkpoint(self._signer.name, head.size, head.root()), self._signer)
        self.store.save_checkpoint(head.size, note)
        return self.store.checkpoint(head.size) or note

    def latest_checkpoint(self) -> str | None:
        """The most recent published checkpoint note, if any."""
        return self.store.checkpoint()

    def save_final_checkpoint(self, note: str) -> None:
        """Keep ``note`` (this log's checkpoint with its witnesses' cosignatures) as final.

        The caller has checked the cosignatures against its witness policy;
        here the log's own signature and tree are checked.

        Raises:
            ProofError: not this log's checkpoint, or not of its tree.
        """
        checkpoint = self.verify_checkpoint(note)
        self.store.save_final(checkpoint.size, note)

    def latest_final_checkpoint(self) -> str | None:
        """The most recent checkpoint made final by witness cosignatures, if any."""
        return self.store.final()

    def checkpoint_at(self, size: int) -> str | None:
        """The checkpoint published for ``size``, if any."""
        return self.store.checkpoint(size)

    def verify_checkpoint(self, note: str) -> Checkpoint:
        """Check a checkpoint against this log's key and its own stored tree.

        Raises:
            ProofError: bad signature, or the tree does not have that root.
        """
        checkpoint, _ = open_checkpoint(note, self.verifier)
        if checkpoint.size > self.size() or self.root_hash(checkpoint.size) != checkpoint.root:
            raise ProofError("checkpoint does not match the stored tree")
        return checkpoint
