"""Detection input routes: a sensor's ``report_flows`` and a device's ``report_health`` (signed device requests)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from iotguard.hub.device_plane import DevicePlane, device_request, signed_request_openapi
from iotguard.hub.services.sensing import DeviceHealthService, FlowIngestService
from iotguard.identity import VerifiedRequest

__all__ = ["sensing_router"]


def sensing_router(flows: FlowIngestService, health: DeviceHealthService, plane: DevicePlane) -> APIRouter:
    """Routes of the detection inputs."""
    router = APIRouter(tags=["detection"])

    @router.post("/v1/flows", openapi_extra=signed_request_openapi("report_flows"))
    def report_flows(req: VerifiedRequest = Depends(device_request(plane, "report_flows"))  # noqa: B008
                     ) -> dict[str, Any]:
        """A sensor reports the flows it saw (signed device request; only sensors may)."""
        return flows.report(req)

    @router.post("/v1/device-health", openapi_extra=signed_request_openapi("report_health"))
    def report_health(req: VerifiedRequest = Depends(device_request(plane, "report_health"))  # noqa: B008
                      ) -> dict[str, Any]:
        """A device reports its own health metrics (signed device request)."""
        return health.report(req)

    return router
