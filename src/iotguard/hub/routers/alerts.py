"""Operator routes of detection: list, show and acknowledge alerts, approve waiting actions; alert metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

from iotguard.detection import Severity
from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.services.detection import DetectionService
from iotguard.hub.services.operators import OperatorService
from iotguard.hub.store import ApiToken

__all__ = ["APPROVAL_ACTIONS", "alerts_router"]

#: The Cedar operator action an approval of each response action needs (on the device).
APPROVAL_ACTIONS = {"quarantine": "quarantine", "release": "release", "revoke": "revoke",
                    "reattest": "manage_devices", "rollback": "update", "notify": "quarantine"}


class _AlertCollector:
    def __init__(self, detection: DetectionService) -> None:
        self.detection = detection

    def collect(self) -> Any:
        family = CounterMetricFamily("iotguard_alerts", "Detection alerts stored", labels=["detector", "severity"])
        for (detector, severity), n in sorted(self.detection.counts().items()):
            family.add_metric([detector, Severity(severity).name.lower()], n)
        yield family


def alerts_router(detection: DetectionService, operators: OperatorService, operator: OperatorAuth,
                  metrics_registry: CollectorRegistry) -> APIRouter:
    """Routes under ``/v1/alerts`` and ``/v1/response``; registers the ``iotguard_alerts`` metric."""
    metrics_registry.register(_AlertCollector(detection))
    router = APIRouter(tags=["detection"])

    @router.get("/v1/alerts")
    def list_alerts(device_id: str | None = None, unacked: bool = False, limit: int = 100,
                    _t: ApiToken = Depends(operator("view_alerts"))) -> list[dict[str, Any]]:  # noqa: B008
        """Alerts, newest first."""
        return [a.to_dict() for a in detection.alerts(device_id=device_id, unacked=unacked,
                                                      limit=max(0, min(limit, 1000)))]

    @router.get("/v1/alerts/{alert_id}")
    def show_alert(alert_id: str,
                   _t: ApiToken = Depends(operator("view_alerts"))) -> dict[str, Any]:  # noqa: B008
        """One alert with the response actions it caused."""
        alert, actions = detection.alert(alert_id)
        return {**alert.to_dict(), "actions": [a.to_dict() for a in actions]}

    @router.post("/v1/alerts/{alert_id}/ack")
    def ack_alert(alert_id: str,
                  t: ApiToken = Depends(operator("ack_alerts"))) -> dict[str, Any]:  # noqa: B008
        """Acknowledge an alert (audited)."""
        return detection.ack(alert_id, t.name).to_dict()

    @router.post("/v1/response/actions/{action_id}/approve")
    def approve_action(action_id: int,
                       t: ApiToken = Depends(operator("view_alerts"))) -> dict[str, Any]:  # noqa: B008
        """Carry out an action waiting for approval; needs the Cedar permission of the action on its device."""
        pending = detection.pending(action_id)
        operators.authorize(t, APPROVAL_ACTIONS[pending.kind], "Device", pending.device_id)
        return detection.approve(action_id, t.name).to_dict()

    return router
