"""Store contracts (every backend of one interface passes one suite) and table ownership."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.hub.db import make_engine
from iotguard.hub.migrations import MIGRATIONS, migrate
from iotguard.hub.stores.telemetry import MemoryTelemetryStore, SqlTelemetryStore, TelemetryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SRC = Path(__file__).resolve().parents[2] / "src" / "iotguard"


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def telemetry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TelemetryStore]:
    if request.param == "memory":
        yield MemoryTelemetryStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlTelemetryStore(engine)
    engine.dispose()


def _row(device: str, seq: int, epoch: int = 1) -> dict[str, object]:
    return {"device_id": device, "epoch": epoch, "seq": seq, "topic": f"iotguard/s/{device}/telemetry",
            "received_at": T0, "body": b"\xa1ap" + bytes([seq % 256])}


# -- telemetry contract ------------------------------------------------------


def test_batch_stores_readings_windows_and_rejections(telemetry: TelemetryStore) -> None:
    inserted = telemetry.store_batch([_row("d1", 1), _row("d1", 2)], [("d1", 1, 2, b"\x03")],
                                     {("d1", "forged"): 2}, now=T0)
    assert inserted == {("d1", 1, 1), ("d1", 1, 2)}
    assert telemetry.reading_count() == 2 and telemetry.reading_count("d1") == 2
    assert telemetry.replay_window("d1", 1) == (2, b"\x03")
    assert telemetry.rejection_totals() == {"forged": 2}


def test_a_reading_stored_twice_is_reported_as_not_inserted(telemetry: TelemetryStore) -> None:
    """Two hubs storing the same (device, epoch, seq): only one insert counts; the other is a replay."""
    telemetry.store_batch([_row("d1", 1)], [], {}, now=T0)
    inserted = telemetry.store_batch([_row("d1", 1), _row("d1", 2)], [], {}, now=T0)
    assert inserted == {("d1", 1, 2)}
    assert telemetry.reading_count("d1") == 2


def test_readings_after_pages_in_id_order(telemetry: TelemetryStore) -> None:
    telemetry.store_batch([_row("d1", i) for i in range(1, 6)] + [_row("d2", 1)], [], {}, now=T0)
    first = telemetry.readings_after(0, limit=3)
    assert [r.seq for r in first] == [1, 2, 3]
    rest = telemetry.readings_after(first[-1].id, device_id="d1")
    assert [r.seq for r in rest] == [4, 5]
    assert telemetry.last_reading_id() == max(r.id for r in telemetry.readings_after(0))
    assert all(r.received_at == T0 for r in rest)


def test_rejections_accumulate(telemetry: TelemetryStore) -> None:
    telemetry.count_rejections({("d1", "replay"): 1}, now=T0)
    telemetry.count_rejections({("d1", "replay"): 2, ("", "malformed"): 1}, now=T0 + timedelta(seconds=1))
    assert telemetry.rejection_totals() == {"replay": 3, "malformed": 1}


def test_erasure_and_retention_deletions(telemetry: TelemetryStore) -> None:
    telemetry.store_batch([_row("d1", 1), _row("d2", 1)], [], {}, now=T0)
    telemetry.store_batch([_row("d1", 2)], [], {}, now=T0 + timedelta(days=2))
    assert [r.seq for r in telemetry.readings_of(["d1"])] == [1, 2]
    old = telemetry.readings_received_before(T0 + timedelta(days=1))
    assert {(r.device_id, r.seq) for r in old} == {("d1", 1), ("d2", 1)}
    assert telemetry.delete_readings([r.id for r in old if r.device_id == "d2"]) == 1
    assert telemetry.delete_readings_of(["d1"]) == 2
    assert telemetry.reading_count() == 0


# -- ownership ---------------------------------------------------------------

#: Each table and the one module that may write it.
OWNERS = {
    "devices": "hub/stores/devices.py",
    "enrollment_tokens": "hub/stores/devices.py",
    "key_epochs": "hub/stores/devices.py",
    "revoked_certificates": "hub/stores/devices.py",
    "hub_meta": "hub/stores/devices.py",
    "readings": "hub/stores/telemetry.py",
    "rejections": "hub/stores/telemetry.py",
    "replay_windows": "hub/stores/telemetry.py",
    "api_tokens": "hub/stores/tokens.py",
    "outbox": "hub/outbox.py",
    "consent_events": "hub/stores/consent.py",
    "consent_pushes": "hub/stores/consent.py",
    "subject_devices": "hub/stores/consent.py",
    "receipts": "hub/stores/receipts.py",
    "budget_ledger": "hub/stores/receipts.py",
    "subject_keys": "hub/stores/subjects.py",
    "contributions": "hub/stores/subjects.py",
    "erasures": "hub/stores/subjects.py",
}


def test_no_module_writes_another_domains_tables() -> None:
    """Erasure asks the telemetry store to delete readings; decommissioning asks the device store; and so on."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        text = path.read_text()
        for table, owner in OWNERS.items():
            if rel == owner:
                continue
            pattern = rf"(?:\b(?:insert|update|delete)\(\s*{table}\b|\b{table}\.(?:insert|update|delete)\(\))"
            if re.search(pattern, text):
                offenders.append(f"{rel} writes {table}")
    assert offenders == []


def test_migrations_are_one_explicit_list_that_keeps_existing_ids() -> None:
    """Existing databases stay upgradable: the ids of ADR 0004 ranges are unchanged, in order."""
    ids = [m.id for m in MIGRATIONS]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for known in ("0001_core", "0002_revoked_certificates", "0100_audit_log", "0200_policy", "0300_privacy",
                  "0400_credentials"):
        assert known in ids
    for path in sorted((SRC / "hub").rglob("*.py")):
        assert "register(Migration" not in path.read_text(), path
