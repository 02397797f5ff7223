"""The hub's core stores on one database engine (SQLite or PostgreSQL).

Each domain's tables are reached through its own store
(:mod:`iotguard.hub.stores`): the device registry, telemetry, operator
tokens, credential records. :class:`HubStore` is those four on one engine, which is what the
composition root opens and migrates.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.credentials import SqlCredentialStore
from iotguard.hub.stores.devices import DecommissionResult, DeviceRecord, EpochKey, SqlDeviceStore
from iotguard.hub.stores.telemetry import ReadingCipher, SqlTelemetryStore, StoredReading
from iotguard.hub.stores.tokens import ROLES, ApiToken, SqlOperatorTokenStore

__all__ = ["ROLES", "ApiToken", "DecommissionResult", "DeviceRecord", "EpochKey", "HubStore", "StoredReading"]


class HubStore(SqlDeviceStore, SqlTelemetryStore, SqlOperatorTokenStore, SqlCredentialStore):
    """Device registry, telemetry, operator tokens and credential records on one engine."""

    def __init__(self, engine: Engine, *, cipher: ReadingCipher | None = None) -> None:
        self._bind(engine)
        self.cipher = cipher

    @classmethod
    def open(cls, url: str) -> HubStore:
        """Connect to ``url`` and apply pending migrations (no reading cipher: compose adds the keyring)."""
        engine = make_engine(url)
        migrate(engine)
        return cls(engine)
