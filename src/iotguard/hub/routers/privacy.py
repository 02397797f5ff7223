"""Privacy routes: receipts, data subjects, consent and its acknowledgement, access and erasure."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.consent import ConsentService
from iotguard.hub.store import ApiToken

__all__ = ["ConsentAckUpload", "ConsentChange", "ReceiptUpload", "SubjectLink", "privacy_router"]


class ReceiptUpload(BaseModel):
    device_id: str = Field(max_length=64)
    receipt: str = Field(max_length=65536)


class ConsentChange(BaseModel):
    """A data subject's consent decision for one purpose (recorded by a privacy officer or the owner's portal)."""

    subject_id: str = Field(min_length=1, max_length=128)
    purpose: str = Field(min_length=1, max_length=32)
    granted: bool


class ConsentAckUpload(BaseModel):
    device_id: str = Field(max_length=64)
    ack: str = Field(max_length=4096)
    signature: str = Field(max_length=128)


class SubjectLink(BaseModel):
    subject_id: str = Field(min_length=1, max_length=128)
    device_id: str = Field(max_length=64)


def privacy_router(consent: ConsentService, operator: OperatorAuth) -> APIRouter:
    """Routes of consent and privacy."""
    router = APIRouter(tags=["privacy"])

    @router.post("/v1/receipts")
    def upload_receipt(body: ReceiptUpload) -> dict[str, Any]:
        """A device's signed privacy receipt (authenticated by its identity-key signature)."""
        claims = consent.store_receipt(body.device_id, body.receipt)
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

    @router.post("/v1/consent/ack")
    def consent_ack(body: ConsentAckUpload) -> dict[str, Any]:
        """A device confirms it applied a pushed consent configuration (signed by its identity key)."""
        ack = consent.acknowledge(body.device_id, body.ack, body.signature)
        return {"device_id": ack.device_id, "version": ack.version, "acknowledged": True}

    @router.post("/v1/subjects/{subject_id}/erase")
    def subject_erase(subject_id: str,
                      t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """Erase everything held about a data subject (crypto-shredding their key); lists affected aggregates."""
        return consent.erase(subject_id, actor=t.name).to_dict()

    @router.get("/v1/subjects/{subject_id}/export")
    def subject_export(subject_id: str,
                       _t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """Everything held about a data subject (access request), machine-readable."""
        return consent.export(subject_id)

    return router
