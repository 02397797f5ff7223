"""Telemetry: stored readings and ingest statistics, for operators."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from iotguard.errors import IotGuardError
from iotguard.hub.ingest import IngestStats
from iotguard.hub.store import HubStore
from iotguard.wire import decode_media_object, decode_reading

__all__ = ["TelemetryService"]


@dataclass
class TelemetryService:
    """Read access to stored readings and this process's ingest counters."""

    store: HubStore
    stats: IngestStats

    def readings_after(self, after: int, *, device_id: str | None, limit: int) -> dict[str, Any]:
        """Stored readings after id ``after``, decoded where possible (poll with the returned ``next``)."""
        rows = self.store.readings_after(after, device_id=device_id, limit=max(1, min(limit, 1000)))
        items = []
        for r in rows:
            try:
                if r.topic.endswith("/media"):
                    m = decode_media_object(r.body)
                    reading: dict[str, Any] = {"media": {"purpose": m.purpose, "stream": m.stream,
                                                         "release": m.release, "method": m.method,
                                                         "codec": m.codec, "bytes": len(m.data)}}
                else:
                    reading = decode_reading(r.body).to_dict()
            except IotGuardError:
                reading = {"raw": base64.b64encode(r.body).decode()}
            items.append({"id": r.id, "device_id": r.device_id, "epoch": r.epoch, "seq": r.seq,
                          "received_at": r.received_at.isoformat(), **reading})
        return {"items": items, "next": rows[-1].id if rows else after}

    def reading_count(self, device_id: str | None = None) -> int:
        """Readings held (for one device)."""
        return self.store.reading_count(device_id)

    def summary(self) -> dict[str, Any]:
        """Ingest counters and latency percentiles since this process started, rejections ever."""
        return {**self.stats.snapshot(), "latency_ms": self.stats.latency_percentiles(),
                "rejected_total": self.store.rejection_totals()}
