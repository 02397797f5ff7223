"""Each hub domain's tables behind its own store (SQL for SQLite and PostgreSQL; in memory for tests)."""

from iotguard.hub.stores.devices import DecommissionResult, DeviceRecord, EpochKey, SqlDeviceStore
from iotguard.hub.stores.telemetry import (
    MemoryTelemetryStore,
    SqlTelemetryStore,
    StoredReading,
    TelemetryStore,
    forget_replay_state,
)
from iotguard.hub.stores.tokens import ROLES, ApiToken, SqlOperatorTokenStore

__all__ = [
    "ROLES",
    "ApiToken",
    "DecommissionResult",
    "DeviceRecord",
    "EpochKey",
    "MemoryTelemetryStore",
    "SqlDeviceStore",
    "SqlOperatorTokenStore",
    "SqlTelemetryStore",
    "StoredReading",
    "TelemetryStore",
    "forget_replay_state",
]
