"""Each hub domain's tables behind its own store (SQL for SQLite and PostgreSQL; in memory for tests)."""

from iotguard.hub.stores.consent import ConsentStore, SqlConsentStore
from iotguard.hub.stores.consent_memory import MemoryConsentStore
from iotguard.hub.stores.devices import DecommissionResult, DeviceRecord, DeviceStore, EpochKey, SqlDeviceStore
from iotguard.hub.stores.devices_memory import MemoryDeviceStore
from iotguard.hub.stores.privacy_memory import MemoryReceiptStore, MemorySubjectStore
from iotguard.hub.stores.receipts import ReceiptStore, SqlLedgerStore, SqlReceiptStore
from iotguard.hub.stores.subjects import SqlSubjectStore, SubjectStore
from iotguard.hub.stores.telemetry import (
    MemoryTelemetryStore,
    SqlTelemetryStore,
    StoredReading,
    TelemetryStore,
    WindowWrite,
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
    "MemoryReceiptStore",
    "MemorySubjectStore",
    "MemoryTelemetryStore",
    "OperatorTokenStore",
    "ReceiptStore",
    "SqlConsentStore",
    "SqlDeviceStore",
    "SqlLedgerStore",
    "SqlOperatorTokenStore",
    "SqlReceiptStore",
    "SqlSubjectStore",
    "SqlTelemetryStore",
    "StoredReading",
    "SubjectStore",
    "TelemetryStore",
    "WindowWrite",
    "forget_replay_state",
]
