"""Privacy routes: receipts, data subjects, consent and its acknowledgement, access and erasure."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from iotguard.hub.device_plane import DevicePlane, device_request, signed_request_openapi
from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.consent import ConsentService
from iotguard.hub.services.data_access import DataAccessService, Reader
from iotguard.hub.store import ApiToken
from iotguard.identity import VerifiedRequest

__all__ = ["ConsentChange", "SubjectLink", "privacy_router"]


class ConsentChange(BaseModel):
    """A data subject's consent decision for one purpose (recorded by a privacy officer or the owner's portal)."""

    subject_id: str = Field(min_length=1, max_length=128)
    purpose: str = Field(min_length=1, max_length=32)
    granted: bool


class SubjectLink(BaseModel):
    subject_id: str = Field(min_length=1, max_length=128)
    device_id: str = Field(max_length=64)


def privacy_router(consent: ConsentService, plane: DevicePlane, operator: OperatorAuth,
                   access: DataAccessService) -> APIRouter:
    """Routes of consent and privacy."""
    router = APIRouter(tags=["privacy"])

    @router.post("/v1/receipts", openapi_extra=signed_request_openapi("upload_receipt"))
    def upload_receipt(req: VerifiedRequest = Depends(device_request(plane, "upload_receipt"))  # noqa: B008
                       ) -> dict[str, Any]:
        """A device's signed privacy receipt (carried in a signed device request)."""
        claims = consent.store_receipt(req)
        return {"stored": True, "readings": len(claims.get("entries", []))}

    @router.post("/v1/subjects/link")
    def link_subject(body: SubjectLink,
                     _t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """Record which data subject a device's readings are about."""
        consent.link(body.subject_id, body.device_id)
        return {"subject_id": body.subject_id, "device_id": body.device_id}

    @router.post("/v1/consent")
    def change_consent(body: ConsentChange,
                       t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """Grant or withdraw a data subject's consent for a purpose (an audit event, pushed to their devices)."""
        state = consent.change(body.subject_id, body.purpose, body.granted, actor=t.name)
        return {"subject_id": body.subject_id, "version": state.version,
                "purposes": {p: d.granted for p, d in state.decisions.items()}}

    @router.post("/v1/consent/ack", openapi_extra=signed_request_openapi("consent_ack"))
    def consent_ack(req: VerifiedRequest = Depends(device_request(plane, "consent_ack"))  # noqa: B008
                    ) -> dict[str, Any]:
        """A device confirms it applied a pushed consent configuration (signed device request)."""
        ack = consent.acknowledge(req)
        return {"device_id": ack.device_id, "version": ack.version, "acknowledged": True}

    @router.post("/v1/subjects/{subject_id}/erase")
    def subject_erase(subject_id: str,
                      t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """Erase everything held about a data subject (crypto-shredding their key); lists affected aggregates."""
        return consent.erase(subject_id, actor=t.name).to_dict()

    @router.get("/v1/subjects/{subject_id}/export")
    def subject_export(subject_id: str,
                       t: ApiToken = Depends(operator(None))) -> dict[str, Any]:  # noqa: B008
        """Everything held about a data subject (access request), machine-readable; a Cedar
        ``manage_consent`` decision with purpose ``subject_access``, audit-logged."""
        return access.export_subject(Reader(t.name, t.role, "api"), subject_id)

    return router
