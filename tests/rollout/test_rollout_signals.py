"""What the health gates read from the hub database (SQLite and PostgreSQL): readings and rejections of
updated devices after their reports, and their latest appraisals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.schema import readings
from iotguard.hub.services.rollout_signals import HubCohortSignals
from iotguard.hub.stores.attestation import SqlAttestationStore, StoredAppraisal
from iotguard.hub.stores.telemetry import SqlTelemetryStore

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    e = make_engine(url)
    migrate(e)
    yield e
    e.dispose()


def test_readings_rejections_and_appraisals_since_each_devices_report(engine: Engine) -> None:
    with engine.begin() as conn:
        for seq, (device, minutes) in enumerate([("dev-1", -1), ("dev-1", 1), ("dev-1", 3), ("dev-2", 1),
                                                 ("dev-2", 3), ("dev-3", 5)]):
            conn.execute(readings.insert().values(device_id=device, epoch=1, seq=seq, topic="t",
                                                  received_at=T0 + timedelta(minutes=minutes), body=b"x"))
    SqlTelemetryStore(engine).count_rejections({("dev-1", "malformed"): 2, ("dev-1", "forged"): 1,
                                                ("dev-3", "replay"): 4}, now=T0)
    attestation = SqlAttestationStore(engine)
    attestation.record(StoredAppraisal("dev-1", T0 + timedelta(minutes=2), "contraindicated", ("x",), "2", "sw"))
    attestation.record(StoredAppraisal("dev-2", T0 - timedelta(minutes=2), "contraindicated", ("x",), "1", "sw"))
    signals = HubCohortSignals(engine, attestation)

    since = {"dev-1": T0, "dev-2": T0 + timedelta(minutes=2)}
    assert signals.readings_since(since) == 3  # dev-1 at +1 and +3, dev-2 at +3
    assert signals.readings_since({}) == 0
    assert signals.rejection_totals(["dev-1", "dev-2"]) == {"dev-1": 3, "dev-2": 0}
    # dev-2's failed appraisal predates its report: only dev-1 counts, and it failed.
    assert signals.appraisals_since(since) == (1, 1)
