"""Contract of the firmware file store (memory, SQLite, PostgreSQL) and a repository surviving a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotguard.errors import IntegrityError, MalformedError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.firmware import FirmwareFileStore, MemoryFirmwareFileStore, SqlFirmwareFileStore
from iotguard.updates import FirmwareRepository
from tests.updates.conftest import MODEL, Fleet


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FirmwareFileStore]:
    if request.param == "memory":
        yield MemoryFirmwareFileStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlFirmwareFileStore(engine)
    engine.dispose()


def test_repository_round_trips_through_the_store(store: FirmwareFileStore, fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(MODEL, 2)
    store.save(fleet.repo.files())
    fleet.repo = FirmwareRepository.from_files(store.load())
    fleet.publish(MODEL, 3)
    store.save(fleet.repo.files())  # only new files and the timestamp change
    assert store.load() == fleet.repo.files()
    assert store.get("metadata/1.root.json") == fleet.repo.files()["metadata/1.root.json"]
    assert store.get("metadata/999.root.json") is None
    fleet.served = store.load()
    device = fleet.device(tmp_path / "dev")
    assert device.install(3).version == 3


def test_consistent_snapshot_files_are_immutable(store: FirmwareFileStore) -> None:
    store.save({"metadata/1.snapshot.json": b"a", "metadata/timestamp.json": b"t1"})
    store.save({"metadata/timestamp.json": b"t2"})
    assert store.get("metadata/timestamp.json") == b"t2"
    with pytest.raises(IntegrityError):
        store.save({"metadata/1.snapshot.json": b"b", "metadata/timestamp.json": b"t3"})
    assert store.get("metadata/1.snapshot.json") == b"a"
    assert store.get("metadata/timestamp.json") == b"t2"  # the failed save changed nothing


@pytest.mark.parametrize("path", ["../etc/passwd", "metadata/../x", "other/1.root.json", "metadata/"])
def test_bad_paths_refused(store: FirmwareFileStore, path: str) -> None:
    with pytest.raises(MalformedError):
        store.save({path: b"x"})
