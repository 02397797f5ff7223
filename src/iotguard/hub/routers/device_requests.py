"""Device-originated requests: enrollment, re-key, certificate renewal, tamper report."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from iotguard.hub.routers.auth import client_addr
from iotguard.hub.services.lifecycle import DeviceLifecycle
from iotguard.hub.services.operators import OperatorService

__all__ = ["EnrollRequest", "RekeyRequest", "RenewRequest", "TamperReport", "device_requests_router"]


class EnrollRequest(BaseModel):
    device_id: str = Field(max_length=64)
    token: str = Field(max_length=64)
    identity_public_key: str = Field(max_length=64)
    kex_public_key: str = Field(max_length=64)
    suites: list[str] = Field(max_length=8)
    signature: str = Field(max_length=128)


class TamperReport(BaseModel):
    device_id: str = Field(max_length=64)
    reason: str = Field(max_length=128)
    ts: int
    signature: str = Field(max_length=128)


class RenewRequest(BaseModel):
    device_id: str = Field(max_length=64)
    ts: int
    signature: str = Field(max_length=128)


class RekeyRequest(BaseModel):
    device_id: str = Field(max_length=64)
    epoch: int = Field(ge=2, le=2**32 - 1)
    kex_public_key: str = Field(max_length=64)
    suites: list[str] = Field(max_length=8)
    ts: int
    signature: str = Field(max_length=128)


def device_requests_router(lifecycle: DeviceLifecycle, operators: OperatorService) -> APIRouter:
    """Routes devices call, authenticated by their enrollment token or identity-key signature."""
    router = APIRouter(tags=["devices"])

    @router.post("/v1/enroll")
    def enroll(req: EnrollRequest, request: Request) -> dict[str, Any]:
        """Device enrollment with a one-time token and proof of possession (rate-limited, with lockout)."""
        keys = [("enroll-addr", client_addr(request)), ("enroll-dev", req.device_id)]
        return operators.attempt(keys, lambda: lifecycle.enroll(req.model_dump()))

    @router.post("/v1/rekey")
    def rekey(req: RekeyRequest) -> dict[str, Any]:
        """Move a device to its next key epoch (signed by its identity key)."""
        return lifecycle.rekey(req.model_dump())

    @router.post("/v1/tamper")
    def tamper(req: TamperReport) -> dict[str, Any]:
        """A device reports tampering: its trust tier drops to ``failed`` and every enforcement point refuses it."""
        device_id = lifecycle.tamper_report(req.model_dump())
        return {"device_id": device_id, "trust_tier": "failed"}

    @router.post("/v1/renew")
    def renew(req: RenewRequest) -> dict[str, Any]:
        """A device renews its operational certificate before expiry (signed by its identity key)."""
        return lifecycle.renew(req.model_dump())

    return router
