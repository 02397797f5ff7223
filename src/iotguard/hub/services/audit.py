"""The audit service: the hub's Merkle log, fed through the outbox.

Services do not append to the log directly when the event belongs to a state
change: they write :func:`audit_message` rows in the change's transaction and
:class:`AuditDelivery` appends them. The append and the outbox confirmation
share one transaction, so an event is appended exactly once even when two
processes deliver the same row; each entry carries its ``outbox_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from iotguard.audit import AuditEvent, TransparencyLog
from iotguard.audit.anchor import CheckpointSchedule
from iotguard.audit.log import LeafRecord
from iotguard.clock import Clock
from iotguard.errors import MalformedError
from iotguard.hub.audit_store import SqlLogStore
from iotguard.hub.outbox import OutboxMessage, OutboxRow, OutboxStore

__all__ = ["AUDIT_KIND", "AUDIT_ORIGIN", "AuditDelivery", "AuditService", "OutboxAuditSink", "audit_message"]

#: Outbox kind of an audit event.
AUDIT_KIND = "audit.event"
#: The hub log's origin (its checkpoint key name).
AUDIT_ORIGIN = "iotguard.local/audit"


def audit_message(event: AuditEvent) -> OutboxMessage:
    """The outbox row that appends ``event`` to the audit log.

    Raises:
        MalformedError: the event cannot be encoded.
    """
    return OutboxMessage(AUDIT_KIND, event.to_cbor())


class AuditDelivery:
    """Outbox handler appending audit events, exactly once per row."""

    kinds: tuple[str, ...] = (AUDIT_KIND,)

    def __init__(self, log: TransparencyLog) -> None:
        self.log = log

    def deliver(self, rows: Sequence[OutboxRow], confirm: Callable[[Any], bool]) -> None:
        leaves = []
        for r in rows:
            try:
                event = AuditEvent.from_cbor(r.payload)
            except MalformedError:
                continue  # cannot happen for rows we wrote; never block the rows behind it
            leaves.append(LeafRecord.from_event(replace(event, details={**event.details, "outbox_id": r.id})))
        store = self.log.store
        if isinstance(store, SqlLogStore):
            store.append(leaves, fence=confirm)
        else:  # in-memory logs in unit tests: confirm after the append
            if leaves:
                store.append(leaves)
            confirm(None)


class OutboxAuditSink:
    """An :class:`~iotguard.audit.AuditSink` that queues events in the outbox (each call one transaction).

    For events that are not part of a state change of their own (a failed
    login, a consent change recorded by a store that takes a sink).
    """

    def __init__(self, outbox: OutboxStore, clock: Clock) -> None:
        self.outbox = outbox
        self.clock = clock

    def record(self, event: AuditEvent) -> None:
        self.outbox.enqueue([audit_message(event)], self.clock.now())

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        self.outbox.enqueue([audit_message(e) for e in events], self.clock.now())


@dataclass
class AuditService:
    """The hub's audit log and its checkpoint schedule."""

    log: TransparencyLog
    checkpoints: CheckpointSchedule

    def delivery(self) -> AuditDelivery:
        """The outbox handler that feeds this log."""
        return AuditDelivery(self.log)
