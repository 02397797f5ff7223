"""Detection state shared by hub processes: hub-signal counters and the flow monitor over one database.

Two service objects over two engines on one SQLite file (PostgreSQL where
the server is available) are two hub processes. Each test splits one
device's traffic or refusals between them: what one process alone would
have alerted on, the two together must alert on too (ADR 0752).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from iotguard.clock import FixedClock
from iotguard.detection import Alert
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.services.sensing import REFUSALS_STATE_KIND, HubSignalsService
from iotguard.hub.stores.detector_state import (
    DetectorStateStore,
    MemoryDetectorStateStore,
    SqlDetectorStateStore,
    StateWrite,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class _Detection:
    """Stands in for the detection service: records the alerts raised; every device in good standing."""

    clock: FixedClock = field(default_factory=lambda: FixedClock(NOW))
    raised: list[Alert] = field(default_factory=list)
    posture: Any = field(default_factory=lambda: SimpleNamespace(posture=SimpleNamespace(
        get=lambda _d: SimpleNamespace(quarantined=False, trust_tier="verified", risk_score=0))))

    def raise_alerts(self, alerts: list[Alert]) -> list[Any]:
        self.raised.extend(alerts)
        return []


@pytest.fixture(params=["sqlite", "postgresql"])
def two_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[DetectorStateStore, ...]]:
    """Two stores over one database, on two engines (two hub processes)."""
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    a, b = make_engine(url), make_engine(url)
    migrate(a)
    yield SqlDetectorStateStore(a), SqlDetectorStateStore(b)
    a.dispose()
    b.dispose()


def _signals(store: DetectorStateStore, sink: _Detection) -> HubSignalsService:
    return HubSignalsService(sink, states=store)  # type: ignore[arg-type]


def test_policy_denials_split_across_two_hub_processes_add_up_to_an_alert(
        two_processes: tuple[DetectorStateStore, ...]) -> None:
    """A probing device whose requests land on two hub processes stays under each one's threshold (5 in 60 s)
    unless the counts are shared: 3 + 2 denials within 40 s are one ``policy_denials`` alert."""
    sink = _Detection()
    one, two = _signals(two_processes[0], sink), _signals(two_processes[1], sink)
    for i in range(5):
        (one if i % 2 == 0 else two).refused("dev-p", "report_flows", "policy_denied", NOW + timedelta(seconds=10 * i))
    assert [(a.device, a.detector) for a in sink.raised] == [("dev-p", "policy_denials")]
    # The throttle is shared too: the next denials, on either process, do not alert again within realert_s.
    for i in range(5, 12):
        (one if i % 2 == 0 else two).refused("dev-p", "report_flows", "policy_denied", NOW + timedelta(seconds=10 * i))
    assert len(sink.raised) == 1


def test_restarted_hub_process_keeps_counting_policy_denials(two_processes: tuple[DetectorStateStore, ...]) -> None:
    sink = _Detection()
    first = _signals(two_processes[0], sink)
    for i in range(4):
        first.refused("dev-p", "renew", "policy_denied", NOW + timedelta(seconds=i))
    restarted = _signals(two_processes[1], sink)
    restarted.refused("dev-p", "renew", "policy_denied", NOW + timedelta(seconds=4))
    assert [a.detector for a in sink.raised] == ["policy_denials"]


def test_attestation_alert_throttle_is_shared_by_hub_processes(two_processes: tuple[DetectorStateStore, ...]) -> None:
    sink = _Detection()
    one, two = _signals(two_processes[0], sink), _signals(two_processes[1], sink)
    one.appraised("dev-a", "contraindicated", ["pcr_mismatch"], NOW)
    two.appraised("dev-a", "contraindicated", ["pcr_mismatch"], NOW + timedelta(seconds=30))
    assert [a.detector for a in sink.raised] == ["attestation_failed"]  # one alert per 300 s, whichever process


class _Interleaved(MemoryDetectorStateStore):
    """Between this process's load and its next write, the peer process handles ``pending`` refusals."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: HubSignalsService | None = None
        self.pending: list[datetime] = []

    def save_many(self, kind: str, writes: Sequence[StateWrite], now: datetime) -> dict[str, int]:
        pending, self.pending = self.pending, []  # the peer's own writes go straight through
        for when in pending if self.peer is not None else []:
            self.peer.refused(writes[0].device_id, "renew", "policy_denied", when)
        return super().save_many(kind, writes, now)


def test_concurrent_refusals_on_two_processes_lose_neither_count() -> None:
    """Compare-and-set: the process whose write lost applies its refusal again to the peer's state."""
    store = _Interleaved()
    sink = _Detection()
    peer, service = _signals(store, sink), _signals(store, sink)
    service.refused("dev-p", "renew", "policy_denied", NOW)
    store.peer = peer
    store.pending = [NOW + timedelta(seconds=1), NOW + timedelta(seconds=2)]  # land during the next refusal
    service.refused("dev-p", "renew", "policy_denied", NOW + timedelta(seconds=3))
    assert service.conflicts == 1 and peer.conflicts == 0
    assert sink.raised == []  # 4 counted so far, none lost, none doubled
    service.refused("dev-p", "renew", "policy_denied", NOW + timedelta(seconds=4))
    assert [a.detector for a in sink.raised] == ["policy_denials"]
    stored = store.load(REFUSALS_STATE_KIND, "dev-p")
    assert stored is not None and stored.version == 5
