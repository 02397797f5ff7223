"""``iotguard analytics budget SUBJECT`` shows the ledger of the subject's linked devices."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.cli.main import main
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.schema import devices
from iotguard.hub.stores.receipts import SqlLedgerStore
from iotguard.privacy import PrivacyLossLedger

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_budget_shows_what_the_ledger_spent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as c:
        for d in ("t1", "t2"):
            c.execute(devices.insert().values(device_id=d, model="thermo-1", segment="home", status="active",
                                              created_at=T0))
    db = ["--database-url", url]
    assert main(["privacy", "link", "--subject", "alice", "--device", "t1", *db]) == 0
    ledger = PrivacyLossLedger(SqlLedgerStore(engine), 1.0, timedelta(days=1))
    ledger.charge("t1", 0.25, "research", T0)
    ledger.charge("t2", 0.5, "research", T0)
    capsys.readouterr()
    assert main(["analytics", "budget", "alice", "--json", *db]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ids"] == ["t1"]
    assert [(r["id"], r["epsilon_spent"]) for r in doc["ledger"]] == [("t1", 0.25)]
    assert main(["analytics", "budget", "nobody", *db]) == 0
    assert "no privacy loss recorded" in capsys.readouterr().out
