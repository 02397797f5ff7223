"""Secure-aggregation routes: devices' round steps (signed ``aggregate``), operators' rounds (Cedar ``query``)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from iotguard.analytics.he_round import MAX_HE_DIMS
from iotguard.analytics.rlwe import PUBLIC_PART_BYTES
from iotguard.hub.device_plane import DevicePlane, device_request, signed_request_openapi
from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.aggregation import SecureAggregationService
from iotguard.hub.store import ApiToken
from iotguard.identity import VerifiedRequest

__all__ = ["HeRoundRequest", "RoundRequest", "aggregation_router"]

_PART_B64 = 4 * ((PUBLIC_PART_BYTES + 2) // 3)


class RoundRequest(BaseModel):
    """A secure-aggregation round to start."""

    devices: list[str] = Field(min_length=3, max_length=65536)
    dims: int = Field(ge=1, le=16_000)
    degree: int = Field(default=0, ge=0, le=65536)
    threshold: int = Field(default=0, ge=0, le=65536)
    phase_timeout_s: float = Field(default=300.0, ge=1.0, le=86400.0)


class HeRoundRequest(BaseModel):
    """A homomorphic-sum round: the decryptor's public key part for the polynomial of ``seed`` (ADR 0418)."""

    devices: list[str] = Field(min_length=2, max_length=65536)
    dims: int = Field(ge=1, le=MAX_HE_DIMS)
    seed: str = Field(min_length=64, max_length=64, pattern="^[0-9a-f]+$")
    decryptor_part: str = Field(min_length=_PART_B64, max_length=_PART_B64, pattern="^[A-Za-z0-9+/]+=*$")
    value_bits: int = Field(default=32, ge=1, le=32)
    max_summands: int | None = Field(default=None, ge=2, le=1 << 16)  # None: the invited devices
    min_devices: int = Field(default=0, ge=0, le=65536)  # 0: two thirds of the invited, at least 2
    timeout_s: float = Field(default=300.0, ge=1.0, le=86400.0)


def aggregation_router(service: SecureAggregationService, plane: DevicePlane, operator: OperatorAuth) -> APIRouter:
    """Routes of secure aggregation."""
    router = APIRouter(tags=["analytics"])

    @router.post("/v1/aggregate", openapi_extra=signed_request_openapi("aggregate"))
    def step(req: VerifiedRequest = Depends(device_request(plane, "aggregate"))) -> dict[str, Any]:  # noqa: B008
        """A device's step in a secure-aggregation round (signed device request)."""
        return service.device_step(req)

    @router.post("/v1/aggregate/rounds")
    def start(body: RoundRequest, t: ApiToken = Depends(operator("query", "Dataset"))) -> dict[str, Any]:  # noqa: B008
        """Start a round among the listed devices; they take part when they poll."""
        rid = service.start(body.devices, body.dims, degree=body.degree, threshold=body.threshold,
                            phase_timeout_s=body.phase_timeout_s, actor=t.name)
        return {"round": rid}

    @router.post("/v1/aggregate/he-rounds")
    def start_he(body: HeRoundRequest,
                 t: ApiToken = Depends(operator("query", "Dataset"))) -> dict[str, Any]:  # noqa: B008
        """Start a homomorphic-sum round; the hub generates and keeps only its share of the decryption key."""
        rid = service.start_he(body.devices, body.dims, seed=bytes.fromhex(body.seed),
                               decryptor_part=base64.b64decode(body.decryptor_part), value_bits=body.value_bits,
                               max_summands=body.max_summands, min_devices=body.min_devices,
                               timeout_s=body.timeout_s, actor=t.name)
        return {"round": rid}

    @router.get("/v1/aggregate/rounds/{round_id}")
    def status(round_id: str, t: ApiToken = Depends(operator("query", "Dataset"))) -> dict[str, Any]:  # noqa: B008
        """A round's phase and, once done, the sum of the surviving devices' vectors."""
        return service.status(round_id, actor=t.name)

    return router
