"""Anchoring checkpoints elsewhere, and publishing checkpoints on a schedule.

An :class:`Anchor` commits a checkpoint to a place the log operator cannot
rewrite on its own: an append-only file on other storage
(``iotguard.hub.audit_store.FileAnchor``), or a second transparency log
(:class:`LogAnchor`) -- the "hierarchical logging" pattern in which a
summary log commits to the detail log's tree heads. Anchoring is periodic:
the hub calls :meth:`CheckpointSchedule.tick` from its own loop; this
library starts no threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from iotguard.audit.events import AuditEvent, EventType
from iotguard.audit.log import TransparencyLog
from iotguard.audit.merkle import leaf_hash, verify_inclusion
from iotguard.audit.note import Checkpoint, open_checkpoint, parse_note
from iotguard.errors import IotGuardError, ProofError

__all__ = ["Anchor", "AnchorReceipt", "CheckpointSchedule", "LogAnchor", "ScheduleResult"]


@dataclass(frozen=True)
class AnchorReceipt:
    """Where a checkpoint was anchored."""

    anchor: str
    origin: str
    size: int
    root: bytes
    reference: str


class Anchor(Protocol):
    """Commits checkpoints to an independent place."""

    @property
    def name(self) -> str:
        """Identifies the anchor in receipts."""
        ...

    def anchor(self, checkpoint: str, now: datetime) -> AnchorReceipt:
        """Durably commit a (verified) checkpoint note.

        Raises:
            StorageError: it could not be committed.
        """
        ...

    def verify(self, receipt: AnchorReceipt, checkpoint: str) -> None:
        """Check the anchor still holds exactly this checkpoint.

        Raises:
            ProofError: the anchor does not hold it (or holds another).
        """
        ...


def _body(checkpoint: str) -> Checkpoint:
    return Checkpoint.from_body(parse_note(checkpoint).text)


class LogAnchor:
    """Anchors checkpoints as entries of a second transparency log.

    Args:
        second_log: The anchoring log (with its own checkpoint key).
        actor: Actor recorded on the anchoring entries.
    """

    def __init__(self, second_log: TransparencyLog, actor: str = "audit.anchor") -> None:
        self._log = second_log
        self._actor = actor

    @property
    def name(self) -> str:
        return f"log:{self._log.origin}"

    def anchor(self, checkpoint: str, now: datetime) -> AnchorReceipt:
        cp = _body(checkpoint)
        event = AuditEvent(
            EventType.CHECKPOINT_ANCHORED,
            now,
            self._actor,
            cp.origin,
            {"size": cp.size, "root": cp.root, "note_sha256": hashlib.sha256(checkpoint.encode()).digest()},
        )
        index = self._log.append([event])
        return AnchorReceipt(self.name, cp.origin, cp.size, cp.root, str(index))

    def verify(self, receipt: AnchorReceipt, checkpoint: str) -> None:
        cp = _body(checkpoint)
        if (receipt.origin, receipt.size, receipt.root) != (cp.origin, cp.size, cp.root):
            raise ProofError("receipt is for another checkpoint")
        index = int(receipt.reference)
        entry = self._log.entries(index, index + 1)[0]
        event = AuditEvent.from_cbor(entry)
        if (
            event.type != EventType.CHECKPOINT_ANCHORED
            or event.subject != cp.origin
            or event.details.get("size") != cp.size
            or event.details.get("root") != cp.root
        ):
            raise ProofError("anchoring entry does not hold this checkpoint")
        second = self._log.publish_checkpoint()
        second_cp, _ = open_checkpoint(second, self._log.verifier)
        proof = self._log.inclusion_proof(index, second_cp.size)
        verify_inclusion(leaf_hash(entry), index, second_cp.size, proof, second_cp.root)


@dataclass(frozen=True)
class ScheduleResult:
    """What one :meth:`CheckpointSchedule.tick` did."""

    checkpoint: str | None
    receipts: list[AnchorReceipt] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: The checkpoint with the witness cosignatures that made it final (when witnesses are configured).
    final: str | None = None


class CheckpointSchedule:
    """Publishes a checkpoint every ``interval`` and anchors each new one.

    With ``finalize`` (the hub's witnesses), a new checkpoint is anchored
    only once it is final: ``finalize`` returns it with the k-of-n witness
    cosignatures, or None when the quorum was not met (reported in
    ``failures`` as ``("witnesses", "not_final")`` and tried again at the
    next tick).

    Args:
        log: The log to checkpoint.
        interval: Time between checkpoints.
        anchors: Where each new checkpoint is anchored.
        finalize: Makes a checkpoint final, or says it is not.
    """

    def __init__(self, log: TransparencyLog, interval: timedelta, anchors: Sequence[Anchor] = (),
                 finalize: Callable[[str], str | None] | None = None) -> None:
        if interval <= timedelta(0):
            raise ValueError("checkpoint interval must be positive")
        self._log = log
        self._interval = interval
        self._anchors = list(anchors)
        self._finalize = finalize
        self._last_time: datetime | None = None
        self._last_anchored = -1

    def tick(self, now: datetime) -> ScheduleResult:
        """Publish and anchor if the interval has elapsed; otherwise do nothing.

        An anchor that fails is reported in ``failures`` (its reason code) and
        retried at the next tick; it does not stop publication.
        """
        if self._last_time is not None and now - self._last_time < self._interval:
            return ScheduleResult(None)
        return self.publish_now(now)

    def publish_now(self, now: datetime) -> ScheduleResult:
        """Publish (and anchor) a checkpoint on demand."""
        note = self._log.publish_checkpoint(now)
        self._last_time = now
        size = _body(note).size
        receipts: list[AnchorReceipt] = []
        failures: list[tuple[str, str]] = []
        final: str | None = None
        if size > self._last_anchored:
            if self._finalize is not None:
                final = self._finalize(note)
                if final is None:
                    return ScheduleResult(note, [], [("witnesses", "not_final")])
            for anchor in self._anchors:
                try:
                    receipts.append(anchor.anchor(final or note, now))
                except IotGuardError as exc:
                    failures.append((anchor.name, exc.code))
            if not failures:
                self._last_anchored = size
        return ScheduleResult(note, receipts, failures, final)
