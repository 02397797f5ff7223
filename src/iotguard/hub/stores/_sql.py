"""Pieces every SQL store shares: UTC times back from SQLite, the dialect's upsert."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from iotguard.audit import AuditEvent, AuditSink
from iotguard.errors import ConfigError

__all__ = ["AuditedSqlStore", "SqlStoreBase", "aware", "aware_utc", "utc"]


def aware(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything iotguard stores is UTC."""
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=UTC)


class SqlStoreBase:
    """An engine and the "insert, ignoring/merging conflicts" statement of its dialect."""

    engine: Engine
    _dialect: str

    def _bind(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name

    def _upsert(self, table: Any) -> Any:
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)


def aware_utc(dt: datetime) -> datetime:
    """:func:`aware` for a value that is never None."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def utc(dt: datetime) -> datetime:
    """A timezone-aware time in UTC.

    Raises:
        ConfigError: ``dt`` is naive.
    """
    if dt.tzinfo is None:
        raise ConfigError("time must be timezone-aware UTC")
    return dt.astimezone(UTC)


class AuditedSqlStore:
    """A store on the hub engine that logs through the owner's audit sink (None only in unit tests)."""

    _engine: Engine
    _audit: AuditSink | None = None

    def __init__(self, engine: Engine, *, audit: AuditSink | None = None) -> None:
        self._engine = engine
        self._audit = audit

    def _record(self, event: AuditEvent) -> None:
        if self._audit is not None:
            self._audit.record(event)
