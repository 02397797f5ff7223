"""One contract for every detector-state store (memory, SQLite, PostgreSQL), and the health service over it.

The SQL store is what lets several hub processes continue one device's
detector baseline: two stores opened on one database (two engines, as two
hub processes have) see each other's writes, and a write made from a stale
version fails instead of overwriting the other process's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iotguard.clock import FixedClock
from iotguard.detection import Alert, HealthDetector, HealthReport, encode_health_report
from iotguard.errors import StorageError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.services.sensing import HEALTH_STATE_KIND, DeviceHealthService
from iotguard.hub.stores.detector_state import (
    MAX_BLOB_BYTES,
    DetectorStateStore,
    MemoryDetectorStateStore,
    SqlDetectorStateStore,
    StateConflict,
    StateWrite,
    VersionedState,
)
from iotguard.identity import VerifiedRequest

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T0 = 1_767_225_600


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[DetectorStateStore, DetectorStateStore]]:
    """Two handles on one backing store (two hub processes where the backend allows it)."""
    if request.param == "memory":
        store = MemoryDetectorStateStore()
        yield store, store
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    a, b = make_engine(url), make_engine(url)
    migrate(a)
    yield SqlDetectorStateStore(a), SqlDetectorStateStore(b)
    a.dispose()
    b.dispose()


def test_state_written_by_one_process_is_loaded_by_another(stores: tuple[DetectorStateStore, ...]) -> None:
    one, two = stores
    assert one.load("health", "dev-1") is None
    assert one.save("health", "dev-1", b"\x00first", None, NOW) == 1
    assert two.load("health", "dev-1") == VersionedState(b"\x00first", 1)
    assert two.save("health", "dev-1", b"second", 1, NOW) == 2
    assert one.load("health", "dev-1") == VersionedState(b"second", 2)
    assert one.load("health", "dev-2") is None and one.load("flows", "dev-1") is None  # keyed by kind and device


def test_stale_write_is_refused_and_keeps_the_other_process_state(stores: tuple[DetectorStateStore, ...]) -> None:
    one, two = stores
    one.save("health", "dev-1", b"base", None, NOW)
    two.save("health", "dev-1", b"two's", 1, NOW)
    with pytest.raises(StateConflict) as err:
        one.save("health", "dev-1", b"one's, from version 1", 1, NOW)
    assert err.value.code == "detector_state_conflict"
    with pytest.raises(StateConflict):
        one.save("health", "dev-1", b"one's, as new", None, NOW)  # created meanwhile
    with pytest.raises(StateConflict):
        one.save("health", "dev-9", b"never existed", 3, NOW)
    assert two.load("health", "dev-1") == VersionedState(b"two's", 2)


def test_oversized_state_and_bad_keys_are_refused(stores: tuple[DetectorStateStore, ...]) -> None:
    one, _ = stores
    with pytest.raises(StorageError) as err:
        one.save("health", "dev-1", b"x" * (MAX_BLOB_BYTES + 1), None, NOW)
    assert err.value.code == "detector_state_too_large"
    with pytest.raises(StorageError) as err:
        one.save("health", "d" * 129, b"x", None, NOW)
    assert err.value.code == "detector_state_bad_key"
    assert one.load("health", "dev-1") is None


def test_rows_of_one_batch_are_written_together_or_not_at_all(stores: tuple[DetectorStateStore, ...]) -> None:
    one, two = stores
    assert one.save_many("flow", [StateWrite("10.0.0.2", b"b", None), StateWrite("10.0.0.1", b"a", None)],
                         NOW) == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert two.load_many("flow", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == {
        "10.0.0.1": VersionedState(b"a", 1), "10.0.0.2": VersionedState(b"b", 1)}
    two.save("flow", "10.0.0.2", b"two's", 1, NOW)
    for stale in ([StateWrite("10.0.0.1", b"a2", 1), StateWrite("10.0.0.2", b"b2", 1)],
                  [StateWrite("10.0.0.1", b"a2", 1), StateWrite("10.0.0.3", b"c", None),
                   StateWrite("10.0.0.2", b"b2", None)]):
        with pytest.raises(StateConflict):
            one.save_many("flow", stale, NOW)
    assert one.load_many("flow", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == {
        "10.0.0.1": VersionedState(b"a", 1), "10.0.0.2": VersionedState(b"two's", 2)}  # nothing half-written
    with pytest.raises(StorageError) as err:
        one.save_many("flow", [StateWrite("10.0.0.1", b"x", 1), StateWrite("10.0.0.1", b"y", 1)], NOW)
    assert err.value.code == "detector_state_bad_key"


def test_prune_deletes_only_the_kinds_rows_written_before_the_cutoff(stores: tuple[DetectorStateStore, ...]) -> None:
    one, two = stores
    old, recent = NOW - timedelta(days=8), NOW - timedelta(hours=1)
    one.save("flow", "10.0.0.1", b"old", None, old)
    one.save("flow", "10.0.0.2", b"recent", None, recent)
    one.save("health", "dev-1", b"old health", None, old)
    assert two.prune("flow", NOW - timedelta(days=7)) == 1
    assert one.load_many("flow", ["10.0.0.1", "10.0.0.2"]) == {"10.0.0.2": VersionedState(b"recent", 1)}
    assert one.load("health", "dev-1") is not None  # another kind is not touched
    with pytest.raises(StateConflict):  # a process that loaded the pruned row loses its write and starts afresh
        one.save("flow", "10.0.0.1", b"old, updated", 1, NOW)
    assert one.save("flow", "10.0.0.1", b"afresh", None, NOW) == 1


# -- the health service over the store: several processes, one baseline ----------------------------------


@dataclass
class _Alerts:
    """Stands in for the detection service: records the alerts raised."""

    clock: FixedClock = field(default_factory=lambda: FixedClock(NOW))
    raised: list[Alert] = field(default_factory=list)

    def raise_alerts(self, alerts: list[Alert]) -> list[Any]:
        self.raised.extend(alerts)
        return []


def _reports() -> list[HealthReport]:
    """Ten normal reports (the baseline), then a dropped backdoor, a new destination, a spike, normal again."""
    normal = HealthReport(T0, 40, 5200, hashlib.sha256(b"agent").digest(), (8883,), (("10.0.0.1:8883", 5000),), 12, 0)
    out = [replace(normal, ts=T0 + 60 * i, cpu_permille=40 + i % 3, messages=12 + i % 2) for i in range(10)]
    out.append(replace(normal, ts=T0 + 660, listening=(23, 8883)))
    out.append(replace(normal, ts=T0 + 720, listening=(23, 8883)))  # throttled: the same alert within realert_s
    out.append(replace(normal, ts=T0 + 780, outbound=(("203.0.113.9:443", 9000),)))
    out.append(replace(normal, ts=T0 + 840, cpu_permille=60_000))
    out.append(replace(normal, ts=T0 + 900, auth_failures=25))
    return out


def _request(device: str, report: HealthReport) -> VerifiedRequest:
    return VerifiedRequest("report_health", device, NOW, hashlib.sha256(str(report.ts).encode()).digest()[:16],
                           {"metrics": encode_health_report(report)}, b"")


def _service(store: DetectorStateStore, sink: _Alerts) -> DeviceHealthService:
    return DeviceHealthService(sink, states=store)  # type: ignore[arg-type]


def _one_process(reports: list[HealthReport]) -> tuple[list[Alert], bytes | None]:
    """What a single detector handling every report does (the reference)."""
    detector = HealthDetector()
    alerts = [a for r in reports for a in detector.observe("dev-h", r)]
    return alerts, detector.export_state("dev-h")


def test_two_hub_processes_alternating_one_device_reports_keep_one_baseline(
        stores: tuple[DetectorStateStore, DetectorStateStore]) -> None:
    sink = _Alerts()
    one, two = _service(stores[0], sink), _service(stores[1], sink)
    reports = _reports()
    for i, report in enumerate(reports):
        (one if i % 2 == 0 else two).report(_request("dev-h", report))
    expected_alerts, expected_state = _one_process(reports)
    assert sink.raised == expected_alerts
    assert {a.detector for a in sink.raised} == {"new_listening_port", "new_destination", "health_anomaly",
                                                 "auth_failures"}
    stored = stores[0].load(HEALTH_STATE_KIND, "dev-h")
    assert stored is not None and stored.body == expected_state and stored.version == len(reports)
    assert one.conflicts == two.conflicts == 0


def test_per_process_detectors_would_split_the_baseline() -> None:
    """The failure the store prevents: each process learning alone misses the backdoor its peer's baseline knew."""
    reports = _reports()
    split = [HealthDetector(), HealthDetector()]
    alerts = [a for i, r in enumerate(reports) for a in split[i % 2].observe("dev-h", r)]
    assert alerts != _one_process(reports)[0]


def test_restarted_hub_continues_the_baseline_without_relearning(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(url)
    migrate(engine)
    reports = _reports()
    first = _service(SqlDetectorStateStore(engine), _Alerts())
    answers = [first.report(_request("dev-h", r)) for r in reports[:10]]
    assert answers[-1]["learning"] is False
    engine.dispose()
    restarted_engine = make_engine(url)  # a new process: nothing in memory
    sink = _Alerts()
    restarted = _service(SqlDetectorStateStore(restarted_engine), sink)
    answer = restarted.report(_request("dev-h", reports[10]))
    assert answer == {"alerts": 1, "actions": 0, "learning": False}
    assert [a.detector for a in sink.raised] == ["new_listening_port"]
    restarted_engine.dispose()


class _Interleaved(MemoryDetectorStateStore):
    """A store where another process handles ``other`` between this process's load and its first write."""

    def __init__(self, peer: DeviceHealthService | None = None, other: HealthReport | None = None) -> None:
        super().__init__()
        self.peer, self.other = peer, other

    def save_many(self, kind: str, writes: Sequence[StateWrite], now: datetime) -> dict[str, int]:
        if self.peer is not None and self.other is not None:
            other, self.other = self.other, None
            self.peer.report(_request(writes[0].device_id, other))
        return super().save_many(kind, writes, now)


def test_concurrent_write_is_detected_and_the_report_applied_again() -> None:
    store = _Interleaved()
    sink = _Alerts()
    peer, service = _service(store, sink), _service(store, sink)
    reports = _reports()
    for r in reports[:9]:
        service.report(_request("dev-h", r))
    store.peer, store.other = peer, reports[9]  # the peer finishes the baseline while this process is busy
    service.report(_request("dev-h", reports[10]))
    assert service.conflicts == 1
    expected_alerts, expected_state = _one_process(reports[:11])
    stored = store.load(HEALTH_STATE_KIND, "dev-h")
    assert stored is not None and stored.body == expected_state
    assert sink.raised == expected_alerts  # the losing attempt's result was thrown away, not raised


def test_unreadable_stored_state_is_relearned_not_a_failed_report() -> None:
    store = MemoryDetectorStateStore()
    store.save(HEALTH_STATE_KIND, "dev-h", b"\xa1\x61v\x09", None, NOW)
    service = _service(store, _Alerts())
    assert service.report(_request("dev-h", _reports()[0]))["learning"] is True
    stored = store.load(HEALTH_STATE_KIND, "dev-h")
    assert stored is not None and stored.version == 2
    fresh = HealthDetector()
    fresh.import_state("dev-h", stored.body)
    assert fresh.learning("dev-h")


class _AlwaysMoved(MemoryDetectorStateStore):
    """Another process writes the device's state before every write of this one."""

    def save_many(self, kind: str, writes: Sequence[StateWrite], now: datetime) -> dict[str, int]:
        current = self.load(kind, writes[0].device_id)
        super().save_many(kind, [StateWrite(writes[0].device_id, b"\xa0", current.version if current else None)],
                          now)
        return super().save_many(kind, writes, now)


def test_state_that_keeps_moving_fails_the_report_as_busy_not_as_a_server_error() -> None:
    from iotguard.hub.api import HTTP_STATUS

    sink = _Alerts()
    service = _service(_AlwaysMoved(), sink)
    with pytest.raises(StateConflict) as err:
        service.report(_request("dev-h", _reports()[0]))
    assert service.conflicts == 16 and sink.raised == [] and service.reports_accepted == 0
    assert HTTP_STATUS[err.value.code] == 503
