"""Attestation routes: the device's ``attest`` request, and the operator's challenge and posture views."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from iotguard.hub.device_plane import DevicePlane, device_request, signed_request_openapi
from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.attestation import AttestationService
from iotguard.hub.store import ApiToken
from iotguard.identity import VerifiedRequest

__all__ = ["attestation_router"]


def attestation_router(attestation: AttestationService, plane: DevicePlane, operator: OperatorAuth) -> APIRouter:
    """Routes of remote attestation."""
    router = APIRouter(tags=["attestation"])

    @router.post("/v1/attest", openapi_extra=signed_request_openapi("attest"))
    def attest(req: VerifiedRequest = Depends(device_request(plane, "attest"))) -> dict[str, Any]:  # noqa: B008
        """A device asks for a nonce (empty evidence) or posts evidence answering one (signed device request)."""
        return attestation.handle(req)

    @router.post("/v1/attest/ak", openapi_extra=signed_request_openapi("certify_ak"))
    def certify_ak(req: VerifiedRequest = Depends(device_request(plane, "certify_ak"))) -> dict[str, Any]:  # noqa: B008
        """A device certifies its TPM attestation key against its endorsement key (two signed requests)."""
        return attestation.certification.handle(req)

    @router.get("/v1/devices/{device_id}/attestations")
    def attestations(device_id: str,
                     _t: ApiToken = Depends(operator("view_devices", "Device", "device_id"))  # noqa: B008
                     ) -> list[dict[str, Any]]:
        """The device's latest appraisals, newest first."""
        return [{"appraised_at": a.appraised_at.isoformat(), "status": a.status, "reasons": list(a.reasons),
                 "firmware_version": a.firmware_version, "keystore_kind": a.keystore_kind}
                for a in attestation.history(device_id)]

    return router
