"""Each hub domain's tables behind its own store (SQL for SQLite and PostgreSQL; in memory for tests)."""

from iotguard.hub.stores.consent import ConsentStore, SqlConsentStore
from iotguard.hub.stores.consent_memory import MemoryConsentStore
from iotguard.hub.stores.devices import DecommissionResult, DeviceRecord, DeviceStore, EpochKey, SqlDeviceStore
from iotguard.hub.stores.devices_memory import MemoryDeviceStore
from iotguard.hub.stores.telemetry import (
    MemoryTelemetryStore,
    SqlTelemetryStore,
    StoredReading,
    TelemetryStore,
    forget_replay_state,
)
from iotguard.hub.stores.tokens import (
    ROLES,
    ApiToken,
    MemoryOperatorTokenStore,
    OperatorTokenStore,
    SqlOperatorTokenStore,
)

__all__ = [
    "ROLES",
    "ApiToken",
    "ConsentStore",
    "DecommissionResult",
    "DeviceRecord",
    "DeviceStore",
    "EpochKey",
    "MemoryConsentStore",
    "MemoryDeviceStore",
    "MemoryOperatorTokenStore",
    "MemoryTelemetryStore",
    "OperatorTokenStore",
    "SqlConsentStore",
    "SqlDeviceStore",
    "SqlOperatorTokenStore",
    "SqlTelemetryStore",
    "StoredReading",
    "TelemetryStore",
    "forget_replay_state",
]
