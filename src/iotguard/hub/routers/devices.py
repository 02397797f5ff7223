"""Operator routes of the device lifecycle and posture: list, add, show, revoke, re-provision,
decommission, quarantine, release."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.lifecycle import DeviceLifecycle
from iotguard.hub.services.operators import OperatorService
from iotguard.hub.services.posture import PostureService
from iotguard.hub.services.telemetry import TelemetryService
from iotguard.hub.store import ApiToken

__all__ = ["DeviceCreate", "ReasonBody", "devices_router"]


class DeviceCreate(BaseModel):
    """Register a device; the response carries its one-time enrollment code."""

    device_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model: str = Field(min_length=1, max_length=64)
    segment: str = Field(default="default", min_length=1, max_length=64)
    serial: str | None = Field(default=None, max_length=128)


class ReasonBody(BaseModel):
    reason: str = Field(default="", max_length=256)


def devices_router(lifecycle: DeviceLifecycle, posture: PostureService, telemetry: TelemetryService,
                   operators: OperatorService, operator: OperatorAuth) -> APIRouter:
    """Routes under ``/v1/devices``."""
    router = APIRouter(tags=["devices"])

    @router.get("/v1/devices")
    def list_devices(status: str | None = None, limit: int = 100, offset: int = 0,
                     _t: ApiToken = Depends(operator("view_devices"))) -> list[dict[str, Any]]:  # noqa: B008
        """List registered devices."""
        return [d.to_dict() for d in lifecycle.devices(status=status, limit=limit, offset=offset)]

    @router.post("/v1/devices", status_code=201)
    def add_device(body: DeviceCreate,
                   t: ApiToken = Depends(operator(None))) -> dict[str, Any]:  # noqa: B008
        """Register a device; the enrollment code is returned once and never stored."""
        operators.authorize(t, "enroll", "Device", body.device_id)
        code = lifecycle.add_device(body.device_id, body.model, segment=body.segment, serial=body.serial,
                                    actor=t.name)
        return {"device_id": body.device_id, "enrollment_code": str(code)}

    @router.get("/v1/devices/{device_id}")
    def show_device(device_id: str,
                    _t: ApiToken = Depends(operator("view_devices", "Device", "device_id"))  # noqa: B008
                    ) -> dict[str, Any]:
        """One device, with its certificate."""
        d = lifecycle.device(device_id)
        return {**d.to_dict(), "certificate_pem": d.cert_pem, "readings": telemetry.reading_count(device_id)}

    @router.post("/v1/devices/{device_id}/revoke")
    def revoke_device(device_id: str, body: ReasonBody | None = None,
                      t: ApiToken = Depends(operator("revoke", "Device", "device_id"))  # noqa: B008
                      ) -> dict[str, Any]:
        """Revoke a device; ingest refuses its data from now on."""
        lifecycle.revoke(device_id, actor=t.name, reason=body.reason if body else "")
        return {"device_id": device_id, "status": "revoked"}

    @router.post("/v1/devices/{device_id}/reprovision")
    def reprovision_device(device_id: str,
                           t: ApiToken = Depends(operator("revoke", "Device", "device_id"))  # noqa: B008
                           ) -> dict[str, Any]:
        """Erase a device's keys, keep its old certificate on the CRL, return a new enrollment code."""
        code = lifecycle.reprovision(device_id, actor=t.name)
        return {"device_id": device_id, "status": "pending", "enrollment_code": str(code)}

    @router.post("/v1/devices/{device_id}/decommission")
    def decommission_device(device_id: str,
                            t: ApiToken = Depends(operator("revoke", "Device", "device_id"))  # noqa: B008
                            ) -> dict[str, Any]:
        """Retire a device for good: revoke it and crypto-erase its session keys."""
        result = lifecycle.decommission(device_id, actor=t.name)
        return {"device_id": device_id, "status": "decommissioned", "erased_epochs": list(result.erased_epochs)}

    @router.post("/v1/devices/{device_id}/quarantine")
    def quarantine_device(device_id: str, body: ReasonBody | None = None,
                          t: ApiToken = Depends(operator("quarantine", "Device", "device_id"))  # noqa: B008
                          ) -> dict[str, Any]:
        """Move a device into the quarantine segment: ingest, API and broker deny it at once."""
        posture.quarantine(device_id, actor=t.name, reason=body.reason if body else "")
        return {"device_id": device_id, "quarantined": True}

    @router.post("/v1/devices/{device_id}/release")
    def release_device(device_id: str, body: ReasonBody | None = None,
                       t: ApiToken = Depends(operator("release", "Device", "device_id"))  # noqa: B008
                       ) -> dict[str, Any]:
        """Return a device from quarantine (policy requires a fresh verified attestation)."""
        posture.release(device_id, actor=t.name, reason=body.reason if body else "")
        return {"device_id": device_id, "quarantined": False}

    return router
