"""Contract of the rollout store on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.errors import RolloutStateError, UnknownRolloutError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.rollouts import DeviceReport, MemoryRolloutStore, RolloutStore, SqlRolloutStore
from iotguard.rollout import HealthGates, RolloutCampaign, RolloutState

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RolloutStore]:
    if request.param == "memory":
        yield MemoryRolloutStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlRolloutStore(engine)
    engine.dispose()


def test_campaign_round_trips(store: RolloutStore) -> None:
    gates = HealthGates(max_rollback_rate=0.1, soak=timedelta(minutes=5))
    c = RolloutCampaign.start("thermo-1-2", "thermo-1", 2, now=NOW, stages=(5, 25, 100), gates=gates)
    store.create(c)
    assert store.get("thermo-1-2") == c
    assert store.active("thermo-1") == c and store.active("camera") is None
    moved = c.advanced(NOW + timedelta(hours=1))
    store.save(moved)
    assert store.get("thermo-1-2") == moved
    assert store.campaigns() == [moved]
    with pytest.raises(UnknownRolloutError):
        store.get("nope")


def test_one_active_campaign_per_model(store: RolloutStore) -> None:
    c = RolloutCampaign.start("a", "thermo-1", 2, now=NOW)
    store.create(c)
    with pytest.raises(RolloutStateError):
        store.create(RolloutCampaign.start("b", "thermo-1", 3, now=NOW))
    with pytest.raises(RolloutStateError):
        store.create(RolloutCampaign.start("a", "camera", 3, now=NOW))
    store.save(c.aborted("operator"))
    store.create(RolloutCampaign.start("b", "thermo-1", 3, now=NOW))
    assert store.active("thermo-1") is not None and store.active("thermo-1").rollout_id == "b"  # type: ignore[union-attr]


def test_a_stale_save_is_refused(store: RolloutStore) -> None:
    """Two hub processes moving one campaign: the second, from a stale copy, loses."""
    c = RolloutCampaign.start("a", "thermo-1", 2, now=NOW)
    store.create(c)
    store.save(c.paused("gate"))
    with pytest.raises(RolloutStateError):
        store.save(c.aborted("operator"))
    assert store.get("a").state is RolloutState.PAUSED
    with pytest.raises(UnknownRolloutError):
        store.save(RolloutCampaign.start("ghost", "thermo-1", 2, now=NOW).paused("x"))


def test_reports_are_kept_per_device_and_replaced(store: RolloutStore) -> None:
    store.create(RolloutCampaign.start("a", "thermo-1", 2, now=NOW))
    store.record_report(DeviceReport("a", "dev-2", "committed", NOW, 3, 12.5))
    store.record_report(DeviceReport("a", "dev-1", "committed", NOW, 0, 1.5))
    store.record_report(DeviceReport("a", "dev-1", "rolled_back", NOW + timedelta(seconds=5), 1, 1.5))
    reports = store.reports("a")
    assert [(r.device_id, r.outcome, r.baseline_rejections) for r in reports] == [
        ("dev-1", "rolled_back", 1), ("dev-2", "committed", 3)]
    assert reports[0].reported_at == NOW + timedelta(seconds=5)
    assert store.reports("other") == []


def test_one_devices_report_is_read_back(store: RolloutStore) -> None:
    store.create(RolloutCampaign.start("a", "thermo-1", 2, now=NOW))
    assert store.report_of("a", "dev-1") is None
    store.record_report(DeviceReport("a", "dev-1", "offered", NOW, 0, 1.5))
    store.record_report(DeviceReport("a", "dev-1", "committed", NOW + timedelta(seconds=1), 2, 1.5))
    report = store.report_of("a", "dev-1")
    assert report is not None and (report.outcome, report.baseline_rejections) == ("committed", 2)
