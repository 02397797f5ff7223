"""Contract of the training-run store (memory, SQLite, PostgreSQL): one update per device and version, CAS steps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.errors import IntegrityError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.learning import (
    LearningRunStore,
    MemoryLearningRunStore,
    PendingUpdate,
    RunRecord,
    SecureRoundBinding,
    SqlLearningRunStore,
    next_row,
)

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LearningRunStore]:
    if request.param == "memory":
        yield MemoryLearningRunStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlLearningRunStore(engine)
    engine.dispose()


def _run(run_id: str = "run-1") -> RunRecord:
    return RunRecord(run_id, {"model_name": "m", "rounds": 3}, ("d1", "d2"), "running", 0, b"\0" * 16, T0, "alice")


def _update(device: str, version: int, at: int = 0) -> PendingUpdate:
    return PendingUpdate(device, version, 5, b"payload-" + device.encode(), T0 + timedelta(seconds=at))


def test_runs_round_trip(store: LearningRunStore) -> None:
    store.create(_run("b"))
    store.create(_run("a"))
    assert store.get("a") == _run("a")
    assert [r.run_id for r in store.runs()] == ["a", "b"]
    assert store.get("zzz") is None
    with pytest.raises(IntegrityError):
        store.create(_run("a"))


def test_replayed_update_for_one_version_is_stored_once(store: LearningRunStore) -> None:
    store.create(_run())
    assert store.add_update("run-1", _update("d1", 0, 1))
    assert not store.add_update("run-1", PendingUpdate("d1", 0, 9, b"other", T0))
    assert store.add_update("run-1", _update("d2", 0, 2))
    assert store.add_update("run-1", _update("d1", 1, 3))  # the next version is a new update
    assert [(u.device_id, u.base_version, u.payload) for u in store.pending("run-1")] == [
        ("d1", 0, b"payload-d1"), ("d2", 0, b"payload-d2"), ("d1", 1, b"payload-d1")]


def test_step_is_compare_and_swap_and_consumes_its_updates_atomically(store: LearningRunStore) -> None:
    run = _run()
    store.create(run)
    store.add_update("run-1", _update("d1", 0, 1))
    store.add_update("run-1", _update("d2", 0, 2))
    stepped = next_row(run, version=1, parameters=b"\1" * 16)
    assert store.commit_step(stepped, [("d1", 0), ("d2", 0)])
    assert store.get("run-1") == stepped and store.pending("run-1") == []
    # A second hub process that read the old row cannot apply the same round again.
    store.add_update("run-1", _update("d1", 1, 3))
    assert not store.commit_step(next_row(run, version=1, parameters=b"\2" * 16), [("d1", 1)])
    got = store.get("run-1")
    assert got is not None and got.parameters == b"\1" * 16
    assert [u.device_id for u in store.pending("run-1")] == ["d1"]


def _bound(round_id: str, version: int = 0, attempt: int = 1) -> SecureRoundBinding:
    return SecureRoundBinding("run-1", version, round_id, ("d1", "d2", "d3"), 2, attempt, f"learn:run-1:v{version}", T0)


def test_a_versions_secure_round_is_bound_once_and_replaced_compare_and_swap(store: LearningRunStore) -> None:
    """Hub processes sharing the store hand out one round per version: the first bind wins, a failed round
    is replaced only by a writer that saw it, and nothing binds a version the run has left."""
    run = _run()
    assert not store.bind_secure_round(_bound("a" * 32))  # no such run
    store.create(run)
    assert store.secure_round("run-1", 0) is None
    assert store.bind_secure_round(_bound("a" * 32))
    assert not store.bind_secure_round(_bound("b" * 32))  # a second process's first round loses
    assert store.secure_round("run-1", 0) == _bound("a" * 32)
    assert not store.bind_secure_round(_bound("c" * 32, attempt=2), replaces="b" * 32)  # not the bound round
    assert store.bind_secure_round(_bound("c" * 32, attempt=2), replaces="a" * 32)  # the failed one replaced
    assert not store.bind_secure_round(_bound("d" * 32, attempt=2), replaces="a" * 32)  # only once
    assert store.secure_round("run-1", 0) == _bound("c" * 32, attempt=2)
    # a task that read the run before its round was applied binds nothing for the old version
    assert store.commit_step(next_row(run, version=1), [])
    assert not store.bind_secure_round(_bound("e" * 32, attempt=3), replaces="c" * 32)
    assert not store.bind_secure_round(_bound("f" * 32, version=2))
    assert store.bind_secure_round(_bound("f" * 32, version=1))
    got = store.get("run-1")
    assert got is not None and store.commit_step(next_row(got, status="stopped"), [])
    assert not store.bind_secure_round(_bound("1" * 32, attempt=2, version=1), replaces="f" * 32)
    assert store.secure_round("run-1", 0) == _bound("c" * 32, attempt=2)
    assert [b.round_id for b in store.secure_rounds("run-1")] == ["c" * 32, "f" * 32]  # each version's last


def test_withdraw_deletes_only_that_devices_pending_rows(store: LearningRunStore) -> None:
    store.create(_run())
    store.add_update("run-1", _update("d1", 0, 1))
    store.add_update("run-1", _update("d1", 1, 2))
    store.add_update("run-1", _update("d2", 0, 3))
    store.withdraw("run-1", "d1")
    store.withdraw("run-1", "nobody")
    assert [(u.device_id, u.base_version) for u in store.pending("run-1")] == [("d2", 0)]
