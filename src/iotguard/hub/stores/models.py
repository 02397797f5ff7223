"""Trained models the hub publishes, as signed artifacts, behind one Protocol.

A published version is immutable: ``add`` refuses a ``(name, version)``
that exists (two publishers racing for one version: the loser retries with
the next). Memory and SQL implementations pass ``tests/learn/test_model_store.py``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, String, Table, Text, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.errors import IntegrityError
from iotguard.hub.stores._sql import SqlStoreBase, aware_utc, utc

__all__ = ["MemoryModelStore", "ModelRecord", "ModelStore", "SqlModelStore", "create_model_tables", "learned_models"]

_meta = MetaData()
learned_models = Table(
    "learned_models",
    _meta,
    Column("name", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("parameters", Integer, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("source", String(256), nullable=False),
    Column("artifact", LargeBinary, nullable=False),
    Column("published_by", String(128), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False),
)


def create_model_tables(conn: Connection) -> None:
    """Migration ``1300_learned_models``: published model artifacts."""
    _meta.create_all(conn)


@dataclass(frozen=True)
class ModelRecord:
    """One published model version.

    Attributes:
        name, version: Identity (versions count up from 1 per name).
        sha256: Hex SHA-256 of :attr:`artifact`.
        parameters: Number of parameters.
        metrics: Metrics it was published with (e.g. test accuracy).
        source: Where it came from (a training run id or a file name).
        artifact: The signed artifact bytes (:func:`iotguard.learn.verify_artifact`).
        published_by: Operator.
        published_at: When.
    """

    name: str
    version: int
    sha256: str
    parameters: int
    metrics: dict[str, float]
    source: str
    artifact: bytes
    published_by: str
    published_at: datetime


class ModelStore(Protocol):
    """Published models by name and version."""

    def add(self, record: ModelRecord) -> None:
        """Store a new version.

        Raises:
            IntegrityError: that name and version exist already.
        """
        ...

    def latest_version(self, name: str) -> int:
        """Highest published version of ``name`` (0 if none)."""
        ...

    def get(self, name: str, version: int | None = None) -> ModelRecord | None:
        """One version (the latest if ``version`` is None), or None."""
        ...

    def list(self) -> list[ModelRecord]:
        """Every version, by name then version."""
        ...


class MemoryModelStore:
    """:class:`ModelStore` in memory (unit tests, single process)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int], ModelRecord] = {}
        self._lock = threading.Lock()

    def add(self, record: ModelRecord) -> None:
        with self._lock:
            key = (record.name, record.version)
            if key in self._rows:
                raise IntegrityError(f"model {record.name} version {record.version} exists")
            self._rows[key] = record

    def latest_version(self, name: str) -> int:
        with self._lock:
            return max((v for n, v in self._rows if n == name), default=0)

    def get(self, name: str, version: int | None = None) -> ModelRecord | None:
        v = self.latest_version(name) if version is None else version
        with self._lock:
            return self._rows.get((name, v))

    def list(self) -> list[ModelRecord]:
        with self._lock:
            return [self._rows[k] for k in sorted(self._rows)]


def _record(row: object) -> ModelRecord:
    r = row._mapping  # type: ignore[attr-defined]
    return ModelRecord(r["name"], int(r["version"]), r["sha256"], int(r["parameters"]), json.loads(r["metrics"]),
                       r["source"], bytes(r["artifact"]), r["published_by"], aware_utc(r["published_at"]))


class SqlModelStore(SqlStoreBase):
    """:class:`ModelStore` in the hub database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._bind(engine)

    def add(self, record: ModelRecord) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(learned_models.insert().values(
                    name=record.name, version=record.version, sha256=record.sha256, parameters=record.parameters,
                    metrics=json.dumps(record.metrics, sort_keys=True), source=record.source,
                    artifact=record.artifact, published_by=record.published_by,
                    published_at=utc(record.published_at)))
        except SqlIntegrityError as exc:
            raise IntegrityError(f"model {record.name} version {record.version} exists") from exc

    def latest_version(self, name: str) -> int:
        with self.engine.connect() as conn:
            v = conn.execute(select(func.max(learned_models.c.version)).where(learned_models.c.name == name)).scalar()
        return int(v or 0)

    def get(self, name: str, version: int | None = None) -> ModelRecord | None:
        v = self.latest_version(name) if version is None else version
        with self.engine.connect() as conn:
            row = conn.execute(select(learned_models).where(learned_models.c.name == name,
                                                            learned_models.c.version == v)).first()
        return None if row is None else _record(row)

    def list(self) -> list[ModelRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(learned_models).order_by(learned_models.c.name, learned_models.c.version))
            return [_record(r) for r in rows]
