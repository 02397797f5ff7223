"""Private analytics routes: central-DP queries and a subject's privacy-loss ledger."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends

from iotguard.analytics.query import parse_query
from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.analytics import AnalyticsService
from iotguard.hub.store import ApiToken

__all__ = ["analytics_router"]


def analytics_router(analytics: AnalyticsService, operator: OperatorAuth) -> APIRouter:
    """Routes of central differential privacy (Cedar ``query`` on the readings dataset)."""
    router = APIRouter(tags=["analytics"])

    @router.post("/v1/analytics/query")
    def query(body: dict[str, Any] = Body(...),  # noqa: B008
              t: ApiToken = Depends(operator("query", "Dataset"))) -> dict[str, Any]:  # noqa: B008
        """A differentially private answer over stored readings, charged to every subject read (429 when refused)."""
        return analytics.query(parse_query(body), actor=t.name)

    @router.get("/v1/analytics/budget/{subject_id}")
    def budget(subject_id: str,
               _t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """A data subject's privacy loss per budget period: local, central and federated."""
        return analytics.budget(subject_id)

    return router
