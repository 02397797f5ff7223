"""The fleet overview's query: filters, counts and pages in SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from iotguard.errors import MalformedError
from iotguard.hub.console import FleetFilter, SqlFleetView
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.policy_store import device_posture
from iotguard.hub.schema import devices, readings
from iotguard.hub.stores.attestation import results

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def view(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlFleetView]:
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    rows = [{"device_id": f"dev-{i:03d}", "model": "thermo-1" if i % 2 else "cam-2", "serial": None,
             "segment": "plant-a" if i < 50 else "plant-b", "status": "active" if i < 90 else "pending",
             "created_at": T0} for i in range(100)]
    posture = [{"device_id": f"dev-{i:03d}", "segment": "plant-a", "model": "thermo-1",
                "trust_tier": "failed" if i % 10 == 0 else "verified", "risk_score": i % 7, "cert_not_after": None,
                "attested_at": None, "declared_location": "", "quarantined": i in (3, 4), "updated_at": T0}
               for i in range(90)]
    with engine.begin() as c:
        c.execute(insert(devices), rows)
        c.execute(insert(device_posture), posture)
        c.execute(insert(readings), [{"device_id": "dev-001", "epoch": 1, "seq": s, "topic": "t", "received_at":
                                      T0.replace(minute=s), "body": b"x"} for s in range(3)])
        c.execute(insert(results), [{"device_id": "dev-001", "appraised_at": T0, "status": "affirming", "reasons": "",
                                     "firmware_version": v, "keystore_kind": "software"} for v in ("1.0.0", "1.1.0")])
    yield SqlFleetView(engine)
    engine.dispose()


def test_pages_are_cut_by_keyset_and_ordered_by_id(view: SqlFleetView) -> None:
    first = view.page(FleetFilter(page_size=30))
    assert first.total == 100 and first.offset == 0 and not first.has_previous and first.has_next
    second = view.page(FleetFilter(after=first.rows[-1].device_id, page_size=30))
    assert [r.device_id for r in second.rows] == [f"dev-{i:03d}" for i in range(30, 60)]
    assert second.offset == 30 and second.has_previous and second.has_next
    last = view.page(FleetFilter(after="dev-089", page_size=30))
    assert [r.device_id for r in last.rows] == [f"dev-{i:03d}" for i in range(90, 100)] and not last.has_next
    back = view.page(FleetFilter(before=second.rows[0].device_id, page_size=30))
    assert back.rows == first.rows and not back.has_previous and back.has_next
    assert view.page(FleetFilter(after="dev-099", page_size=30)).rows == ()
    filtered = view.page(FleetFilter(trust_tier="failed", after="dev-030", page_size=3))  # 40, 50, 60
    assert [r.device_id for r in filtered.rows] == ["dev-040", "dev-050", "dev-060"]
    assert filtered.offset == 4 and filtered.has_previous and filtered.has_next


def test_next_page_is_stable_under_inserts(view: SqlFleetView) -> None:
    """Devices registered while an operator pages neither repeat a row nor hide one (OFFSET paging did both:
    rows inserted before the page shift every later page)."""
    first = view.page(FleetFilter(page_size=30))
    with view.engine.begin() as c:
        c.execute(insert(devices), [{"device_id": f"dev-000-{i}", "model": "thermo-1", "serial": None,
                                     "segment": "plant-a", "status": "active", "created_at": T0} for i in range(5)])
    second = view.page(FleetFilter(after=first.rows[-1].device_id, page_size=30))
    assert [r.device_id for r in second.rows] == [f"dev-{i:03d}" for i in range(30, 60)]
    assert second.total == 105 and second.offset == 35  # the new rows sort before this page


def test_filters_combine(view: SqlFleetView) -> None:
    assert view.page(FleetFilter(status="pending")).total == 10
    assert view.page(FleetFilter(trust_tier="failed")).total == 9
    assert view.page(FleetFilter(trust_tier="unverified")).total == 10  # no posture row: unverified
    assert [r.device_id for r in view.page(FleetFilter(quarantined=True)).rows] == ["dev-003", "dev-004"]
    assert view.page(FleetFilter(quarantined=False)).total == 98
    assert view.page(FleetFilter(query="plant-b", status="active")).total == 40
    assert view.page(FleetFilter(query="cam")).total == 50


def test_search_text_is_not_a_pattern(view: SqlFleetView) -> None:
    """Check for LIKE injection: ``%`` and ``_`` in the search box match themselves only."""
    assert view.page(FleetFilter(query="%")).total == 0
    assert view.page(FleetFilter(query="dev_0")).total == 0


def test_last_seen_and_firmware_come_for_the_page(view: SqlFleetView) -> None:
    row = view.page(FleetFilter(query="dev-001")).rows[0]
    assert row.last_seen == T0.replace(minute=2) and row.firmware == "1.1.0"
    other = view.page(FleetFilter(query="dev-002")).rows[0]
    assert other.last_seen is None and other.firmware is None


def test_counts(view: SqlFleetView) -> None:
    assert view.counts() == {"pending": 10, "active": 90, "revoked": 0, "decommissioned": 0, "quarantined": 2}


@pytest.mark.parametrize("bad", [{"status": "sleeping"}, {"trust_tier": "root"}, {"page_size": 0},
                                 {"page_size": 1000}, {"query": "x" * 65}, {"after": "x" * 129},
                                 {"after": "dev-001", "before": "dev-009"}])
def test_filter_values_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(MalformedError):
        FleetFilter(**bad)  # type: ignore[arg-type]
