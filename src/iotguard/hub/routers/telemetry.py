"""Telemetry routes: stored readings and ingest statistics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.operators import OperatorService
from iotguard.hub.services.telemetry import TelemetryService
from iotguard.hub.store import ApiToken

__all__ = ["telemetry_router"]


def telemetry_router(telemetry: TelemetryService, operators: OperatorService, operator: OperatorAuth) -> APIRouter:
    """Routes under ``/v1/telemetry`` and ``/v1/stats``."""
    router = APIRouter(tags=["telemetry"])

    @router.get("/v1/telemetry")
    def readings(after: int = 0, device_id: str | None = None, limit: int = 100,
                 t: ApiToken = Depends(operator("read_telemetry"))) -> dict[str, Any]:  # noqa: B008
        """Stored readings after id ``after`` (poll with the returned ``next``)."""
        if device_id is not None:
            operators.authorize(t, "read_telemetry", "Device", device_id)
        return telemetry.readings_after(after, device_id=device_id, limit=limit)

    @router.get("/v1/stats")
    def hub_stats(_t: ApiToken = Depends(operator("view_alerts"))) -> dict[str, Any]:  # noqa: B008
        """Ingest counters and latency percentiles since this hub started."""
        return telemetry.summary()

    return router
