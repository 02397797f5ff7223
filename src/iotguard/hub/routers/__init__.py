"""One FastAPI router per hub capability; routers translate HTTP to service calls and nothing else."""

from iotguard.hub.routers.auth import OperatorAuth, client_addr
from iotguard.hub.routers.device_requests import device_requests_router
from iotguard.hub.routers.devices import devices_router
from iotguard.hub.routers.health import health_router
from iotguard.hub.routers.operators import operators_router
from iotguard.hub.routers.privacy import privacy_router
from iotguard.hub.routers.telemetry import telemetry_router

__all__ = [
    "OperatorAuth",
    "client_addr",
    "device_requests_router",
    "devices_router",
    "health_router",
    "operators_router",
    "privacy_router",
    "telemetry_router",
]
