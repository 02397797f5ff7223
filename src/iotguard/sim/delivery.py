"""Reconciling what a simulated fleet sent with what the hub stored, as sets.

A reading's identity is its device plus the SHA-256 of its plaintext body
(timestamp, fields and purpose, as sealed). That identity survives a resend
(the same envelope again) and would also catch the same reading stored under
two sequence numbers (re-sealed after a re-key, say), which the database's
unique (device, epoch, sequence) constraint cannot see. Counting by
(device, epoch, sequence) instead would report zero duplicates by
construction.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

__all__ = ["DeliveryReport", "ReadingSource", "reading_identity", "reconcile", "stored_identities"]

#: (device id, SHA-256 of the reading body).
Identity = tuple[str, bytes]


def reading_identity(device_id: str, body: bytes) -> Identity:
    """The identity of one reading: its device and the SHA-256 of its plaintext body."""
    return device_id, hashlib.sha256(body).digest()


@dataclass(frozen=True)
class DeliveryReport:
    """Sent against stored, by reading identity.

    Attributes:
        sent: Readings the devices sent (distinct identities).
        stored: Rows the hub stored for them or for anything else.
        lost: Sent readings with no stored row.
        duplicated: Extra rows of a reading already stored once.
        unexpected: Stored rows whose reading no device sent.
    """

    sent: int
    stored: int
    lost: int
    duplicated: int
    unexpected: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def reconcile(sent: Iterable[Identity], stored: Iterable[Identity]) -> DeliveryReport:
    """Compare the multiset of stored identities with the set of sent ones."""
    sent_set = set(sent)
    stored_count = Counter(stored)
    lost = sum(1 for identity in sent_set if stored_count[identity] == 0)
    duplicated = sum(n - 1 for identity, n in stored_count.items() if identity in sent_set and n > 1)
    unexpected = sum(n for identity, n in stored_count.items() if identity not in sent_set)
    return DeliveryReport(len(sent_set), sum(stored_count.values()), lost, duplicated, unexpected)


class _StoredRow(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def device_id(self) -> str: ...

    @property
    def body(self) -> bytes: ...


class ReadingSource(Protocol):
    """What :func:`stored_identities` reads (the hub store's ``readings_after``)."""

    def readings_after(self, after_id: int = 0, *, device_id: str | None = None,
                       limit: int = 1000) -> Sequence[_StoredRow]: ...


def stored_identities(store: ReadingSource, *, page: int = 5000) -> list[Identity]:
    """Identity of every stored row (all rows, so a reading stored twice shows twice)."""
    out: list[Identity] = []
    after = 0
    while rows := store.readings_after(after, limit=page):
        out.extend(reading_identity(r.device_id, r.body) for r in rows)
        after = rows[-1].id
    return out
