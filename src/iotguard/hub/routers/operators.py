"""Operator routes that need no token yet: the one-time bootstrap."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from iotguard.hub.device_plane import body_openapi, client_address, credential_body
from iotguard.hub.services.operators import OperatorService

__all__ = ["BootstrapRedeem", "operators_router"]


class BootstrapRedeem(BaseModel):
    bootstrap_token: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)


def operators_router(operators: OperatorService) -> APIRouter:
    """``/v1/bootstrap``."""
    router = APIRouter(tags=["operators"])

    @router.post("/v1/bootstrap", openapi_extra=body_openapi(BootstrapRedeem))
    def bootstrap(request: Request,
                  body: dict[str, Any] = Depends(credential_body(BootstrapRedeem, ("bootstrap_token",)))  # noqa: B008
                  ) -> dict[str, Any]:
        """Trade the one-time bootstrap token printed at first start for the first security-admin token."""
        token = operators.bootstrap(str(body["bootstrap_token"]), str(body["name"]), client_address(request))
        return {"token": token, "role": "security-admin"}

    return router
