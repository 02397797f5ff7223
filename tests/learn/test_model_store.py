"""Contract of the model store (memory, SQLite, PostgreSQL): versions are immutable and listed in order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.errors import IntegrityError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.models import MemoryModelStore, ModelRecord, ModelStore, SqlModelStore

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ModelStore]:
    if request.param == "memory":
        yield MemoryModelStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlModelStore(engine)
    engine.dispose()


def _record(name: str, version: int, body: bytes = b"artifact") -> ModelRecord:
    return ModelRecord(name, version, "ab" * 32, 42, {"accuracy": 0.9}, "run-1", body, "alice", T0)


def test_versions_round_trip_and_latest_is_highest(store: ModelStore) -> None:
    assert store.latest_version("digits") == 0 and store.get("digits") is None
    store.add(_record("digits", 1, b"one"))
    store.add(_record("digits", 2, b"two"))
    store.add(_record("anomaly", 1))
    assert store.latest_version("digits") == 2
    latest = store.get("digits")
    assert latest is not None and latest.artifact == b"two" and latest.metrics == {"accuracy": 0.9}
    first = store.get("digits", 1)
    assert first == _record("digits", 1, b"one")
    assert [(r.name, r.version) for r in store.list()] == [("anomaly", 1), ("digits", 1), ("digits", 2)]
    assert store.get("digits", 3) is None


def test_published_version_cannot_be_replaced(store: ModelStore) -> None:
    store.add(_record("digits", 1, b"genuine"))
    with pytest.raises(IntegrityError):
        store.add(_record("digits", 1, b"substituted"))
    got = store.get("digits", 1)
    assert got is not None and got.artifact == b"genuine"
