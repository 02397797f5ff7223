"""What a rollout's health gates read about an updated cohort: appraisals and telemetry.

:class:`CohortSignals` is the small interface the rollout service asks;
:class:`HubCohortSignals` answers from the hub database (the attestation
store's appraisals, and ingest's stored readings and rejection counters,
read only). Tests and simulations may pass their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from iotguard.hub.schema import readings, rejections
from iotguard.hub.stores.attestation import AttestationStore

__all__ = ["CONTRAINDICATED", "CohortSignals", "HubCohortSignals"]

#: The appraisal status that counts as a failed attestation.
CONTRAINDICATED = "contraindicated"
_CHUNK = 500


class CohortSignals(Protocol):
    """Health signals of a set of devices."""

    def rejection_totals(self, device_ids: Sequence[str]) -> dict[str, int]:
        """Each device's ingest rejections so far (cumulative)."""
        ...

    def readings_since(self, since: Mapping[str, datetime]) -> int:
        """Readings stored from each device after its time."""
        ...

    def appraisals_since(self, since: Mapping[str, datetime]) -> tuple[int, int]:
        """(devices appraised after their time, of which ``contraindicated``) by latest appraisal."""
        ...


class HubCohortSignals:
    """:class:`CohortSignals` from the hub database."""

    def __init__(self, engine: Engine, attestation: AttestationStore) -> None:
        self._engine = engine
        self._attestation = attestation

    def rejection_totals(self, device_ids: Sequence[str]) -> dict[str, int]:
        totals = dict.fromkeys(device_ids, 0)
        ids = list(device_ids)
        with self._engine.connect() as conn:
            for i in range(0, len(ids), _CHUNK):
                q = (select(rejections.c.device_id, func.sum(rejections.c.count))
                     .where(rejections.c.device_id.in_(ids[i:i + _CHUNK])).group_by(rejections.c.device_id))
                for device_id, count in conn.execute(q):
                    totals[device_id] = int(count)
        return totals

    def readings_since(self, since: Mapping[str, datetime]) -> int:
        if not since:
            return 0
        earliest = min(since.values())
        ids = list(since)
        total = 0
        with self._engine.connect() as conn:
            for i in range(0, len(ids), _CHUNK):
                q = (select(readings.c.device_id, readings.c.received_at)
                     .where(readings.c.device_id.in_(ids[i:i + _CHUNK]), readings.c.received_at >= earliest))
                for device_id, received in conn.execute(q):
                    at = received if received.tzinfo is not None else received.replace(tzinfo=earliest.tzinfo)
                    total += at >= since[device_id]
        return total

    def appraisals_since(self, since: Mapping[str, datetime]) -> tuple[int, int]:
        attested = failed = 0
        for device_id, at in since.items():
            latest = self._attestation.history(device_id, limit=1)
            if latest and latest[0].appraised_at >= at:
                attested += 1
                failed += latest[0].status == CONTRAINDICATED
        return attested, failed
