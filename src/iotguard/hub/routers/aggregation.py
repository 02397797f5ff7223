"""Secure-aggregation routes: devices' round steps (signed ``aggregate``), operators' rounds (Cedar ``query``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from iotguard.hub.device_plane import DevicePlane, device_request, signed_request_openapi
from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.aggregation import SecureAggregationService
from iotguard.hub.store import ApiToken
from iotguard.identity import VerifiedRequest

__all__ = ["HeRoundRequest", "RoundRequest", "aggregation_router"]


class RoundRequest(BaseModel):
    """A secure-aggregation round to start."""

    devices: list[str] = Field(min_length=3, max_length=65536)
    dims: int = Field(ge=1, le=16_000)
    degree: int = Field(default=0, ge=0, le=65536)
    threshold: int = Field(default=0, ge=0, le=65536)
    phase_timeout_s: float = Field(default=300.0, ge=1.0, le=86400.0)


class HeRoundRequest(BaseModel):
    """A homomorphic-sum round to start under the dealer's public key, with the hub's key share (hex)."""

    devices: list[str] = Field(min_length=2, max_length=65536)
    dims: int = Field(ge=1, le=16_000)
    n: str = Field(min_length=500, max_length=800, pattern="^[0-9a-f]+$")
    value_bits: int = Field(default=32, ge=1, le=64)
    max_summands: int | None = Field(default=None, ge=2, le=1 << 32)  # None: the invited devices
    hub_share: str = Field(min_length=1, max_length=2000, pattern="^[0-9a-f]+$")
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
        """Start a homomorphic-sum round; the hub keeps only its share of the decryption key."""
        rid = service.start_he(body.devices, body.dims, n=int(body.n, 16), value_bits=body.value_bits,
                               max_summands=body.max_summands, hub_share=int(body.hub_share, 16),
                               timeout_s=body.timeout_s, actor=t.name)
        return {"round": rid}

    @router.get("/v1/aggregate/rounds/{round_id}")
    def status(round_id: str, t: ApiToken = Depends(operator("query", "Dataset"))) -> dict[str, Any]:  # noqa: B008
        """A round's phase and, once done, the sum of the surviving devices' vectors."""
        return service.status(round_id, actor=t.name)

    return router
