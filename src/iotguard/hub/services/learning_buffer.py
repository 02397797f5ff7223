"""Secure FedBuff's buffer (ADR 1307): which ready devices a buffered secure round takes, and what it costs them.

In a secure FedBuff run a device trains on the model version it was given
and then says it is *ready* (``learn_task`` with ``ready`` = base version +
1). The hub keeps a ready marker per device in the run store's pending
updates (:data:`READY`, an empty payload: the update itself never reaches
the hub). When ``buffer_size`` ready devices wait, one secure-aggregation
round is bound for the run's current version with the first of them as
members. No I/O here: the service passes the markers, the bound rounds and
its gates in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from iotguard.hub.stores.learning import PendingUpdate, SecureRoundBinding

__all__ = ["READY", "buffer_members", "participations", "ready_markers", "staleness_weight"]

#: The payload of a ready marker: the device holds an update, the hub holds nothing of it.
READY = b""


def staleness_weight(version: int, base_version: int, exponent: float) -> float:
    """FedBuff's weight ``(1 + tau) ** -exponent`` of an update trained on ``base_version`` applied to ``version``
    (``tau = version - base_version >= 0``, so the weight is in ``(0, 1]``)."""
    return float((1.0 + max(0, version - base_version)) ** -exponent)


def ready_markers(pending: Sequence[PendingUpdate]) -> list[PendingUpdate]:
    """The run's ready markers, oldest first (a secure run stores no other pending rows)."""
    return [p for p in pending if p.payload == READY]


def buffer_members(markers: Sequence[PendingUpdate], version: int, max_staleness: int, size: int,
                   subject: Callable[[str], str], can_join: Callable[[str], bool]) -> list[PendingUpdate]:
    """The first ``size`` ready markers, oldest first (ties: the oldest base first), one device per data subject
    (its oldest marker), not staler than ``max_staleness`` and passing ``can_join`` (enrolled, posture, budget);
    fewer if fewer wait."""
    taken: list[PendingUpdate] = []
    subjects: set[str] = set()
    for marker in sorted(markers, key=lambda m: (m.received_at, m.base_version, m.device_id)):
        s = subject(marker.device_id)
        if s in subjects or not 0 <= version - marker.base_version <= max_staleness:
            continue
        if not can_join(marker.device_id):
            continue
        subjects.add(s)
        taken.append(marker)
        if len(taken) == size:
            break
    return taken


def participations(bindings: Sequence[SecureRoundBinding], version: int,
                   subject: Callable[[str], str]) -> dict[str, int]:
    """How many applied rounds (those bound to versions before ``version``) each subject took part in."""
    counts: dict[str, int] = {}
    for bound in bindings:
        if bound.version < version:
            for s in {subject(d) for d in bound.members}:
                counts[s] = counts.get(s, 0) + 1
    return counts
