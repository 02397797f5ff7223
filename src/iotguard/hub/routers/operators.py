"""Operator routes that need no token yet: the one-time bootstrap."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from iotguard.hub.routers.auth import client_addr
from iotguard.hub.services.operators import OperatorService

__all__ = ["BootstrapRedeem", "operators_router"]


class BootstrapRedeem(BaseModel):
    bootstrap_token: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)


def operators_router(operators: OperatorService) -> APIRouter:
    """``/v1/bootstrap``."""
    router = APIRouter(tags=["operators"])

    @router.post("/v1/bootstrap")
    def bootstrap(body: BootstrapRedeem, request: Request) -> dict[str, Any]:
        """Trade the one-time bootstrap token printed at first start for the first security-admin token."""
        token = operators.bootstrap(body.bootstrap_token, body.name, client_addr(request))
        return {"token": token, "role": "security-admin"}

    return router
