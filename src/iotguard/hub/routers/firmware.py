"""Firmware routes: devices fetch TUF files and check in (signed requests); operators run rollouts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from iotguard.hub.device_plane import DevicePlane, device_request, signed_request_openapi
from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.firmware import FirmwareService
from iotguard.hub.services.rollouts import RolloutService
from iotguard.hub.store import ApiToken
from iotguard.identity import VerifiedRequest
from iotguard.rollout import DEFAULT_STAGES, HealthGates

__all__ = ["RolloutRequest", "firmware_router"]


class RolloutRequest(BaseModel):
    model: str = Field(max_length=64)
    version: int = Field(ge=1, lt=2**31)
    stages: list[float] = Field(default_factory=lambda: list(DEFAULT_STAGES), max_length=16)
    rollout_id: str | None = Field(default=None, max_length=64)
    max_rollback_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    max_attestation_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    max_rejection_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    min_reported: float = Field(default=0.9, gt=0.0, le=1.0)
    soak_s: float = Field(default=0.0, ge=0.0, le=30 * 86400)


class RolloutMove(BaseModel):
    reason: str = Field(default="operator", max_length=128)


def firmware_router(firmware: FirmwareService, rollouts: RolloutService, plane: DevicePlane,
                    operator: OperatorAuth) -> APIRouter:
    """Routes of firmware updates and rollout campaigns."""
    router = APIRouter(tags=["firmware"])

    @router.post("/v1/firmware/fetch", openapi_extra=signed_request_openapi("update_fetch"),
                 response_class=Response)
    def fetch(req: VerifiedRequest = Depends(device_request(plane, "update_fetch"))  # noqa: B008
              ) -> Response:
        """One TUF repository file for the device's own model (signed device request)."""
        model = rollouts.devices.get_device(req.device_id).model
        return Response(firmware.device_file(model, str(req.body["path"])), media_type="application/octet-stream")

    @router.post("/v1/firmware/check", openapi_extra=signed_request_openapi("update_check"))
    def check(req: VerifiedRequest = Depends(device_request(plane, "update_check"))  # noqa: B008
              ) -> dict[str, Any]:
        """A device reports its firmware and last install; the answer names the release to install."""
        return rollouts.check_in(req.device_id, version=int(req.body["version"]),
                                 attempted=int(req.body["attempted"]), outcome=str(req.body["outcome"]))

    @router.get("/v1/rollouts")
    def list_rollouts(_t: ApiToken = Depends(operator("view_devices"))  # noqa: B008
                      ) -> list[dict[str, Any]]:
        """Every rollout campaign."""
        return [{"rollout_id": c.rollout_id, "model": c.model, "version": c.version, "state": str(c.state),
                 "stage": c.stage + 1, "percent": c.percent, "reason": c.reason} for c in rollouts.campaigns()]

    @router.get("/v1/rollouts/{rollout_id}")
    def rollout_status(rollout_id: str, _t: ApiToken = Depends(operator("view_devices"))  # noqa: B008
                       ) -> dict[str, Any]:
        """A campaign, its cohort's health and what its gates say now."""
        return rollouts.status(rollout_id).to_dict()

    @router.post("/v1/rollouts")
    def start(body: RolloutRequest,
              token: ApiToken = Depends(operator("publish_firmware", "Firmware"))  # noqa: B008
              ) -> dict[str, Any]:
        """Start a staged rollout of a published release."""
        gates = HealthGates(max_rollback_rate=body.max_rollback_rate,
                            max_attestation_failure_rate=body.max_attestation_failure_rate,
                            max_rejection_rate=body.max_rejection_rate, min_reported=body.min_reported,
                            soak=timedelta(seconds=body.soak_s))
        campaign = rollouts.start(body.model, body.version, actor=token.name, stages=body.stages, gates=gates,
                                  rollout_id=body.rollout_id)
        return rollouts.status(campaign.rollout_id).to_dict()

    @router.post("/v1/rollouts/{rollout_id}/pause")
    def pause(rollout_id: str, body: RolloutMove,
              token: ApiToken = Depends(operator("publish_firmware", "Firmware", "rollout_id"))  # noqa: B008
              ) -> dict[str, Any]:
        """Pause a running campaign."""
        rollouts.pause(rollout_id, actor=token.name, reason=body.reason)
        return rollouts.status(rollout_id).to_dict()

    @router.post("/v1/rollouts/{rollout_id}/resume")
    def resume(rollout_id: str,
               token: ApiToken = Depends(operator("publish_firmware", "Firmware", "rollout_id"))  # noqa: B008
               ) -> dict[str, Any]:
        """Resume a paused campaign."""
        rollouts.resume(rollout_id, actor=token.name)
        return rollouts.status(rollout_id).to_dict()

    @router.post("/v1/rollouts/{rollout_id}/abort")
    def abort(rollout_id: str, body: RolloutMove,
              token: ApiToken = Depends(operator("publish_firmware", "Firmware", "rollout_id"))  # noqa: B008
              ) -> dict[str, Any]:
        """Abort a campaign for good."""
        rollouts.abort(rollout_id, actor=token.name, reason=body.reason)
        return rollouts.status(rollout_id).to_dict()

    return router
