"""The web console: server-rendered operator pages and the device-owner portal, on the hub's HTTPS API."""

from iotguard.hub.console.auth import ConsoleAuth, SessionGrant
from iotguard.hub.console.fleet_view import FleetFilter, FleetPage, FleetRow, SqlFleetView
from iotguard.hub.console.views import ConsoleViews
from iotguard.hub.console.web import CONSOLE_PREFIX, CONTENT_SECURITY_POLICY, create_console_app
from iotguard.hub.stores.console import (
    ConsoleSession,
    ConsoleSessionStore,
    MemoryConsoleSessionStore,
    SqlConsoleSessionStore,
)

__all__ = [
    "CONSOLE_PREFIX",
    "CONTENT_SECURITY_POLICY",
    "ConsoleAuth",
    "ConsoleSession",
    "ConsoleSessionStore",
    "ConsoleViews",
    "FleetFilter",
    "FleetPage",
    "FleetRow",
    "MemoryConsoleSessionStore",
    "SessionGrant",
    "SqlConsoleSessionStore",
    "SqlFleetView",
    "create_console_app",
]
