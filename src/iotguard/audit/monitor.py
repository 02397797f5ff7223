"""Monitoring a live log: follow its checkpoints and raise alerts on any inconsistency.

The monitor is pure logic over a :class:`LogSource` (the REST API, or the
database through a read-only :class:`~iotguard.audit.log.TransparencyLog`)
and a :class:`MonitorState` the caller persists. Each :meth:`Monitor.poll`
verifies the newest checkpoint's signature, its consistency with the last
verified one, and that the new entries hash to its root. Findings are data
(:class:`Alert`), not exceptions: a monitor keeps running and reports.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from iotguard.audit.events import AuditEvent
from iotguard.audit.log import MAX_ENTRIES_PER_READ, TransparencyLog
from iotguard.audit.merkle import leaf_hash, verify_consistency
from iotguard.audit.note import NoteVerifier, open_checkpoint
from iotguard.audit.tree import CompactRange, integrate
from iotguard.errors import IotGuardError, MalformedError, StorageError

__all__ = [
    "Alert",
    "AlertKind",
    "LocalLogSource",
    "LogSource",
    "Monitor",
    "MonitorState",
    "PollResult",
]


class AlertKind:
    """Alert kinds a monitor raises."""

    BAD_CHECKPOINT = "bad_checkpoint"  # unsigned, wrong key, malformed
    ROLLBACK = "rollback"  # the log shows a smaller tree than before
    SPLIT_VIEW = "split_view"  # same size, different root: two histories exist
    INCONSISTENT = "inconsistent"  # no valid consistency proof: history rewritten
    ENTRIES_MISMATCH = "entries_mismatch"  # served entries do not hash to the signed root
    MISSING_ENTRIES = "missing_entries"  # the log withholds entries the checkpoint covers
    MALFORMED_ENTRY = "malformed_entry"  # an entry is not a valid audit event
    UNAVAILABLE = "unavailable"  # the log could not be read


class LogSource(Protocol):
    """What a monitor (or witness) reads from a log."""

    def latest_checkpoint(self) -> str:
        """The newest checkpoint note."""
        ...

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof between two sizes."""
        ...

    def entries(self, start: int, end: int) -> list[bytes]:
        """Leaf bytes ``start..end-1`` (may return fewer than asked if capped)."""
        ...


class LocalLogSource:
    """A :class:`LogSource` over a log object (the database, read directly)."""

    def __init__(self, log: TransparencyLog) -> None:
        self._log = log

    def latest_checkpoint(self) -> str:
        note = self._log.latest_checkpoint()
        if note is None:
            raise StorageError("the log has published no checkpoint")
        return note

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return self._log.consistency_proof(old_size, new_size)

    def entries(self, start: int, end: int) -> list[bytes]:
        return self._log.entries(start, min(end, start + MAX_ENTRIES_PER_READ))


@dataclass(frozen=True)
class MonitorState:
    """The last verified checkpoint and the compact range of its tree."""

    checkpoint: str
    compact: CompactRange

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "checkpoint": self.checkpoint,
            "size": self.compact.size,
            "compact": [base64.b64encode(h).decode() for h in self.compact.hashes],
        }

    @classmethod
    def from_dict(cls, raw: Any) -> MonitorState:
        """Parse the persisted form.

        Raises:
            MalformedError: the state is corrupt.
        """
        try:
            hashes = tuple(base64.b64decode(h, validate=True) for h in raw["compact"])
            return cls(str(raw["checkpoint"]), CompactRange(int(raw["size"]), hashes))
        except (KeyError, TypeError, ValueError, StorageError):
            raise MalformedError("monitor state is corrupt") from None


@dataclass(frozen=True)
class Alert:
    """An inconsistency found in the log."""

    kind: str
    message: str
    checkpoint: str = ""


@dataclass(frozen=True)
class PollResult:
    """Outcome of one poll: the state to persist and any alerts."""

    state: MonitorState | None
    alerts: list[Alert] = field(default_factory=list)
    new_entries: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was wrong."""
        return not self.alerts


class Monitor:
    """Follows one log.

    Args:
        log_key: The log's verifier key.
        check_events: Also parse every entry as an :class:`AuditEvent`.
    """

    def __init__(self, log_key: NoteVerifier, *, check_events: bool = True) -> None:
        self._key = log_key
        self._check_events = check_events

    def poll(self, source: LogSource, state: MonitorState | None) -> PollResult:
        """Check the log's newest checkpoint against the last verified state.

        On the first poll (``state`` None) every entry is fetched and the
        whole tree recomputed. On alerts the returned state is the old one:
        the monitor never advances past an inconsistency.
        """
        try:
            note = source.latest_checkpoint()
        except IotGuardError as exc:
            return PollResult(state, [Alert(AlertKind.UNAVAILABLE, str(exc))])
        try:
            cp, _ = open_checkpoint(note, self._key)
        except IotGuardError as exc:
            return PollResult(state, [Alert(AlertKind.BAD_CHECKPOINT, str(exc), note)])
        compact = CompactRange(0) if state is None else state.compact
        if state is not None:
            if cp.size < compact.size:
                msg = f"log shrank from {compact.size} to {cp.size} entries"
                return PollResult(state, [Alert(AlertKind.ROLLBACK, msg, note)])
            if cp.size == compact.size:
                if cp.root != compact.root():
                    msg = f"two different roots for tree size {cp.size}"
                    return PollResult(state, [Alert(AlertKind.SPLIT_VIEW, msg, note)])
                return PollResult(MonitorState(note, compact))
            if compact.size > 0:
                try:
                    proof = source.consistency_proof(compact.size, cp.size)
                    verify_consistency(compact.size, cp.size, compact.root(), cp.root, proof)
                except IotGuardError as exc:
                    msg = f"no valid consistency proof {compact.size} -> {cp.size}: {exc}"
                    return PollResult(state, [Alert(AlertKind.INCONSISTENT, msg, note)])
        return self._catch_up(source, state, compact, note, cp.size, cp.root)

    def _catch_up(
        self,
        source: LogSource,
        state: MonitorState | None,
        compact: CompactRange,
        note: str,
        size: int,
        root: bytes,
    ) -> PollResult:
        start = compact.size
        while compact.size < size:
            try:
                batch = source.entries(compact.size, size)
            except IotGuardError as exc:
                return PollResult(state, [Alert(AlertKind.UNAVAILABLE, str(exc), note)])
            if not batch:
                msg = f"log withholds entries from index {compact.size}"
                return PollResult(state, [Alert(AlertKind.MISSING_ENTRIES, msg, note)])
            if self._check_events:
                bad = self._first_malformed(batch)
                if bad is not None:
                    msg = f"entry {compact.size + bad} is not a valid audit event"
                    return PollResult(state, [Alert(AlertKind.MALFORMED_ENTRY, msg, note)])
            compact, _ = integrate(compact, [leaf_hash(e) for e in batch[: size - compact.size]])
        if compact.root() != root:
            msg = f"entries {start}..{size - 1} do not hash to the signed root"
            return PollResult(state, [Alert(AlertKind.ENTRIES_MISMATCH, msg, note)])
        return PollResult(MonitorState(note, compact), [], size - start)

    @staticmethod
    def _first_malformed(batch: Sequence[bytes]) -> int | None:
        for i, data in enumerate(batch):
            try:
                AuditEvent.from_cbor(data)
            except MalformedError:
                return i
        return None
