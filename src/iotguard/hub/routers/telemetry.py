"""Telemetry routes: stored readings and ingest statistics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.data_access import DataAccessService, Reader
from iotguard.hub.services.telemetry import TelemetryService
from iotguard.hub.store import ApiToken

__all__ = ["telemetry_router"]


def telemetry_router(telemetry: TelemetryService, access: DataAccessService, operator: OperatorAuth) -> APIRouter:
    """Routes under ``/v1/telemetry`` and ``/v1/stats``."""
    router = APIRouter(tags=["telemetry"])

    @router.get("/v1/telemetry")
    def readings(purpose: str = "", after: int = 0, device_id: str | None = None, limit: int = 100,
                 t: ApiToken = Depends(operator(None))) -> dict[str, Any]:  # noqa: B008
        """Stored readings after id ``after`` that the caller may read for ``purpose`` (poll with ``next``).

        Cedar decides ``read_telemetry`` with the purpose, then per device with
        whether its contract declares the purpose and its subject consented
        (ADR 0405); readings of other devices or purposes are withheld and counted.
        """
        return access.read_readings(Reader(t.name, t.role, "api"), purpose, after=after, device_id=device_id,
                                    limit=limit)

    @router.get("/v1/stats")
    def hub_stats(_t: ApiToken = Depends(operator("view_alerts"))) -> dict[str, Any]:  # noqa: B008
        """Ingest counters and latency percentiles since this hub started."""
        return telemetry.summary()

    return router
