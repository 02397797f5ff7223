"""Telemetry: reading counts and ingest statistics, for operators (raw readings: :mod:`.data_access`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iotguard.hub.ingest import IngestStats
from iotguard.hub.store import HubStore

__all__ = ["TelemetryService"]


@dataclass
class TelemetryService:
    """Reading counts and this process's ingest counters (no reading bodies)."""

    store: HubStore
    stats: IngestStats

    def reading_count(self, device_id: str | None = None) -> int:
        """Readings held (for one device)."""
        return self.store.reading_count(device_id)

    def summary(self) -> dict[str, Any]:
        """Ingest counters and latency percentiles since this process started, rejections ever."""
        return {**self.stats.snapshot(), "latency_ms": self.stats.latency_percentiles(),
                "rejected_total": self.store.rejection_totals()}
