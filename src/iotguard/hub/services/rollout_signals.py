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

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine

from iotguard.hub.schema import readings, rejections
from iotguard.hub.stores.attestation import AttestationStore

__all__ = ["CONTRAINDICATED", "CohortSignals", "HubCohortSignals"]

#: The appraisal status that counts as a failed attestation.
CONTRAINDICATED = "contraindicated"
_CHUNK = 500
_OR_CHUNK = 100


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
        items = list(since.items())
        total = 0
        with self._engine.connect() as conn:
            for i in range(0, len(items), _OR_CHUNK):  # one counting query per chunk of devices
                window = or_(*(and_(readings.c.device_id == d, readings.c.received_at >= at)
                               for d, at in items[i:i + _OR_CHUNK]))
                total += int(conn.execute(select(func.count()).select_from(readings).where(window)).scalar_one())
        return total

    def appraisals_since(self, since: Mapping[str, datetime]) -> tuple[int, int]:
        attested = failed = 0
        for device_id, at in since.items():
            latest = self._attestation.history(device_id, limit=1)
            if latest and latest[0].appraised_at >= at:
                attested += 1
                failed += latest[0].status == CONTRAINDICATED
        return attested, failed
