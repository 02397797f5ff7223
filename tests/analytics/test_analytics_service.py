"""The hub's analytics service, its routes and ``iotguard analytics query|budget``: answers over stored
readings per subject, charged to the subject ledger; a refused query spends nothing; Cedar decides."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from iotguard.cli.main import main
from iotguard.hub.schema import readings
from iotguard.hub.stores.consent import SqlConsentStore
from iotguard.wire import Reading, encode_reading
from tests.hub.conftest import HubParts
from tests.hub.metrics_scrape import scrape, value

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _store_readings(hub: HubParts, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """As ingest stores them: sealed under each owner's data key (ADR 0405)."""
    hub.store.store_batch([{"device_id": device, "epoch": 1, "seq": seq, "topic": f"t/{device}", "received_at": T0,
                            "body": encode_reading(Reading(seq, fields))} for seq, (device, fields) in enumerate(rows)],
                          [], {}, now=T0)
    with hub.store.engine.connect() as c:
        assert c.execute(readings.select().where(readings.c.key_id.is_(None))).first() is None


@pytest.fixture
def stocked(hub: HubParts) -> HubParts:
    # 40 subjects with 5 readings each; "alice" owns two devices
    rows = [(f"d{i}", {"temp": 20.0 + i % 5, "room": ("kitchen", "hall")[i % 2]}) for i in range(40) for _ in range(5)]
    rows += [("a2", {"temp": 30.0, "room": "hall"})] * 5
    _store_readings(hub, rows)
    links = SqlConsentStore(hub.store.engine)
    links.link_device("alice", "d0", T0)
    links.link_device("alice", "a2", T0)
    return hub


def test_query_route_answers_and_charges_every_subject_and_refuses_past_the_budget(stocked: HubParts) -> None:
    analyst = stocked.operator_token("analyst")
    officer = stocked.operator_token("privacy-officer")
    q = {"statistic": "sum", "field": "temp", "epsilon": 0.6, "lo": 0, "hi": 40, "max_per_subject": 5,
         "purpose": "research"}
    r = stocked.client.post("/v1/analytics/query", json=q, headers=analyst)
    assert r.status_code == 200, r.text
    # d1..d39 sum to 4,300; alice (d0 at 20, a2 at 30) keeps 5 of her 10 rows: 100..150. Laplace noise
    # exceeds 4 x its 95 % half-width with probability e^-12.
    assert abs(r.json()["value"] - 4425.0) <= 25 + 4 * r.json()["ci95"] and "subjects" not in r.json()
    grouped = stocked.client.post("/v1/analytics/query", headers=analyst, json={
        "statistic": "count", "field": "temp", "epsilon": 0.3, "max_per_subject": 5, "purpose": "research",
        "group_by": "room", "groups": ["kitchen", "hall"]})
    assert grouped.status_code == 200 and set(grouped.json()["groups"]) == {"kitchen", "hall"}
    # 0.9 of 1.0 spent: a 0.2 query is refused (429) and spends nothing
    refused = stocked.client.post("/v1/analytics/query", json={**q, "epsilon": 0.2}, headers=analyst)
    assert refused.status_code == 429 and refused.json()["error"] == "budget_exhausted"
    b = stocked.client.get("/v1/analytics/budget/alice", headers=officer).json()
    assert b["periods"][0]["central"] == pytest.approx(0.9) and b["remaining_now"] == pytest.approx(0.1)
    assert b["budget_epsilon"] == 1.0 and "basic" in b["composition"]


def test_answered_and_refused_queries_are_counted(stocked: HubParts) -> None:
    analyst = stocked.operator_token("analyst")
    q = {"statistic": "count", "field": "temp", "epsilon": 0.6, "max_per_subject": 5, "purpose": "research"}
    before = scrape(stocked)
    assert stocked.client.post("/v1/analytics/query", json=q, headers=analyst).status_code == 200
    assert stocked.client.post("/v1/analytics/query", json=q, headers=analyst).status_code == 429  # 1.2 > 1.0
    after = scrape(stocked)
    for outcome in ("answered", "refused"):
        name = "iotguard_dp_queries_total"
        assert value(after, name, outcome=outcome) == value(before, name, outcome=outcome) + 1, outcome


def test_query_route_is_a_cedar_decision_and_parses_strictly(stocked: HubParts) -> None:
    q = {"statistic": "count", "field": "temp", "epsilon": 0.1, "purpose": "research"}
    viewer = stocked.operator_token("viewer")
    assert stocked.client.post("/v1/analytics/query", json=q, headers=viewer).status_code == 403
    assert stocked.client.get("/v1/analytics/budget/alice", headers=viewer).status_code == 403
    assert stocked.client.post("/v1/analytics/query", json=q).status_code == 401
    analyst = stocked.operator_token("analyst")
    for bad in ({**q, "sql": "drop"}, {**q, "epsilon": "1"}, {**q, "epsilon": 50}, {**q, "field": "a b"},
                {**q, "statistic": "median"}, {**q, "group_by": "room"}):
        r = stocked.client.post("/v1/analytics/query", json=bad, headers=analyst)
        assert r.status_code == 400 and r.json()["error"] == "malformed", bad
    b = stocked.client.get("/v1/analytics/budget/alice", headers=stocked.operator_token("privacy-officer")).json()
    assert b["periods"] == []  # nothing refused or malformed was charged


def test_cli_query_and_budget(stocked: HubParts, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTGUARD_HUB__DATA_DIR", str(tmp_path / "hub"))  # the hub's key store opens its readings
    db = ["--database-url", str(stocked.store.engine.url)]
    assert main(["analytics", "query", "quantile", "temp", "--epsilon", "0.5", "--lo", "0", "--hi", "40",
                 "--per-subject", "5", "--purpose", "research", "--json", *db]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["statistic"] == "quantile" and 0 <= doc["value"] <= 40
    assert main(["analytics", "budget", "alice", "--json", *db]) == 0
    ledger = json.loads(capsys.readouterr().out)
    assert ledger["periods"][0]["central"] == pytest.approx(0.5)
    assert main(["analytics", "query", "count", "temp", "--epsilon", "0.6", "--purpose", "research", *db]) != 0
    assert "budget" in capsys.readouterr().err
    assert main(["analytics", "budget", "nobody", *db]) == 0
    assert "no privacy loss recorded" in capsys.readouterr().out
