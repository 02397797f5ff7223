"""Health and metrics routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from iotguard import __version__
from iotguard.hub.ingest import IngestStats
from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.store import ApiToken

__all__ = ["health_router"]


class _StatsCollector:
    def __init__(self, stats: IngestStats, outbox_pending: Callable[[], int]) -> None:
        self.stats = stats
        self.outbox_pending = outbox_pending

    def collect(self) -> Any:
        snap = self.stats.snapshot()
        stored = CounterMetricFamily("iotguard_readings_stored", "Readings durably stored")
        stored.add_metric([], snap["stored"])
        yield stored
        rej = CounterMetricFamily("iotguard_envelopes_rejected", "Envelopes rejected", labels=["reason"])
        for reason, n in sorted(snap["rejected"].items()):
            rej.add_metric([reason], n)
        yield rej
        batches = CounterMetricFamily("iotguard_ingest_batches", "Ingest batches committed")
        batches.add_metric([], snap["batches"])
        yield batches
        lat = GaugeMetricFamily("iotguard_ingest_latency_ms", "End-to-end latency percentiles",
                                labels=["quantile"])
        for q, v in self.stats.latency_percentiles().items():
            lat.add_metric([q], v)
        yield lat
        pending = GaugeMetricFamily("iotguard_outbox_pending", "Side effects not delivered yet (all processes)")
        pending.add_metric([], self.outbox_pending())
        yield pending


def health_router(stats: IngestStats, outbox_pending: Callable[[], int], metrics_registry: CollectorRegistry,
                  operator: OperatorAuth) -> APIRouter:
    """``/health`` (anonymous) and ``/metrics`` (Prometheus, with ``view_alerts``)."""
    metrics_registry.register(_StatsCollector(stats, outbox_pending))
    router = APIRouter(tags=["health"])

    @router.get("/health")
    def health() -> dict[str, Any]:
        """Liveness: the only anonymous route."""
        return {"status": "ok", "version": __version__}

    @router.get("/metrics", response_class=PlainTextResponse)
    def metrics(_t: ApiToken = Depends(operator("view_alerts"))) -> PlainTextResponse:  # noqa: B008
        """Prometheus metrics (bearer token with read_metrics)."""
        return PlainTextResponse(generate_latest(metrics_registry).decode(), media_type="text/plain; version=0.0.4")

    return router
