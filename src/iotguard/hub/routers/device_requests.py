"""Device-originated requests: enrollment, re-key, certificate renewal, tamper report.

Each goes through the one device plane (:mod:`iotguard.hub.device_plane`):
enrollment by its one-time token and proof of possession, the others as
signed device requests; then one Cedar decision with the device's posture.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from iotguard.hub.device_plane import (
    DevicePlane,
    body_openapi,
    client_address,
    credential_body,
    device_request,
    signed_request_openapi,
)
from iotguard.hub.services.lifecycle import DeviceLifecycle
from iotguard.identity import VerifiedRequest

__all__ = ["EnrollRequest", "device_requests_router"]


class EnrollRequest(BaseModel):
    device_id: str = Field(max_length=64)
    token: str = Field(max_length=64)
    identity_public_key: str = Field(max_length=64)
    kex_public_key: str = Field(max_length=64)
    #: Ed25519 public key of the device's TLS transport key (ADR 0600).
    transport_public_key: str = Field(max_length=64)
    suites: list[str] = Field(max_length=8)
    signature: str = Field(max_length=128)


def device_requests_router(lifecycle: DeviceLifecycle, plane: DevicePlane) -> APIRouter:
    """Routes devices call about their own lifecycle."""
    router = APIRouter(tags=["devices"])

    @router.post("/v1/enroll", openapi_extra=body_openapi(EnrollRequest))
    def enroll(request: Request,
               body: dict[str, Any] = Depends(credential_body(EnrollRequest, ("token", "signature")))  # noqa: B008
               ) -> dict[str, Any]:
        """Device enrollment: one-time token and proof of possession, then Cedar ``complete_enrollment``."""
        return plane.enroll(lifecycle, body, client_address(request))

    @router.post("/v1/rekey", openapi_extra=signed_request_openapi("rekey"))
    def rekey(req: VerifiedRequest = Depends(device_request(plane, "rekey"))) -> dict[str, Any]:  # noqa: B008
        """Move a device to its next key epoch (signed device request)."""
        return lifecycle.rekey(req)

    @router.post("/v1/tamper", openapi_extra=signed_request_openapi("tamper_report"))
    def tamper(req: VerifiedRequest = Depends(device_request(plane, "tamper_report"))  # noqa: B008
               ) -> dict[str, Any]:
        """A device reports tampering: its trust tier drops to ``failed`` and every enforcement point refuses it."""
        device_id = lifecycle.tamper_report(req)
        return {"device_id": device_id, "trust_tier": "failed"}

    @router.post("/v1/renew", openapi_extra=signed_request_openapi("renew"))
    def renew(req: VerifiedRequest = Depends(device_request(plane, "renew"))) -> dict[str, Any]:  # noqa: B008
        """A device renews its operational certificate before expiry (signed device request)."""
        return lifecycle.renew(req)

    return router
