"""Subjects and consent in memory, for unit tests (passes the same contract as the SQL store)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from iotguard.audit import AuditEvent, AuditSink, EventType
from iotguard.errors import ConsentError
from iotguard.hub.outbox import MemoryOutboxStore, OutboxMessage
from iotguard.hub.stores._sql import utc
from iotguard.privacy.consent import ConsentAck, ConsentConfig, ConsentDecision, ConsentState
from iotguard.privacy.contract import DataContract

__all__ = ["MemoryConsentStore"]


@dataclass
class _Push:
    digest: bytes
    pushed_at: datetime
    acked_at: datetime | None = None


class MemoryConsentStore:
    """:class:`~iotguard.hub.stores.consent.ConsentStore` in memory.

    Args:
        outbox: Receives the ``effects`` of each consent change.
        audit: Where consent changes are logged.
    """

    def __init__(self, outbox: MemoryOutboxStore | None = None, audit: AuditSink | None = None) -> None:
        self.outbox = outbox if outbox is not None else MemoryOutboxStore()
        self.audit = audit
        self._owner: dict[str, str] = {}
        self._events: dict[str, list[tuple[str, bool, datetime]]] = {}
        self._pushes: dict[tuple[str, int], _Push] = {}
        self._lock = threading.Lock()

    def link_device(self, subject_id: str, device_id: str, at: datetime) -> None:
        self._owner[device_id] = subject_id

    def devices_of(self, subject_id: str) -> list[str]:
        return sorted(d for d, s in self._owner.items() if s == subject_id)

    def subject_of(self, device_id: str) -> str | None:
        return self._owner.get(device_id)

    def consent_state(self, subject_id: str) -> ConsentState:
        events = self._events.get(subject_id, [])
        decisions = {purpose: ConsentDecision(granted, at) for purpose, granted, at in events}
        return ConsentState(subject_id, len(events), MappingProxyType(decisions))

    def set_consent(self, subject_id: str, purpose: str, granted: bool, at: datetime, *, actor: str,
                    contract: DataContract | None = None,
                    effects: Sequence[OutboxMessage] = ()) -> ConsentState:
        if contract is not None:
            contract.purpose(purpose)
        at = utc(at)
        with self._lock:
            before = self.consent_state(subject_id)
            after = before.grant(purpose, at) if granted else before.withdraw(purpose, at)
            self._events.setdefault(subject_id, []).append((purpose, granted, at))
            self.outbox.enqueue(effects, at)
        if self.audit is not None:
            self.audit.record(AuditEvent(EventType.CONSENT_CHANGED.value, at, actor, subject_id,
                                         {"purpose": purpose, "granted": granted, "version": after.version,
                                          "devices": self.devices_of(subject_id)}))
        return after

    def consent_configs(self, subject_id: str, issued_at: datetime) -> list[ConsentConfig]:
        state = self.consent_state(subject_id)
        configs = [state.to_config(d, issued_at) for d in self.devices_of(subject_id)]
        for cfg in configs:
            self._pushes[(cfg.device_id, state.version)] = _Push(cfg.digest(), utc(issued_at))
        return configs

    def record_consent_ack(self, ack: ConsentAck, received_at: datetime) -> None:
        push = self._pushes.get((ack.device_id, ack.version))
        if push is None or push.digest != ack.config_sha256:
            raise ConsentError("device acknowledged a consent configuration the hub did not push")
        push.acked_at = utc(received_at)

    def unacknowledged_consent(self, *, pushed_before: datetime | None = None) -> list[tuple[str, int]]:
        return sorted(k for k, p in self._pushes.items()
                      if p.acked_at is None and (pushed_before is None or p.pushed_at < pushed_before))
