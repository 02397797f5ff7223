"""Hub privacy store: consent, acks, receipts, retention, access export, erasure with crypto-shredding."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from iotguard.audit import MemoryAuditSink
from iotguard.clock import FixedClock
from iotguard.errors import BudgetExhausted, ConsentError, KeyStoreError, MalformedError, PolicyDenied
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.privacy_store import PrivacyStore, SqlLedgerStore, enforce_retention
from iotguard.hub.schema import devices, readings
from iotguard.keys import SoftwareKeyStore
from iotguard.privacy import PrivacyLossLedger, PrivacyPipeline, ReceiptBuilder, load_contract
from iotguard.privacy.receipt import RECEIPT_SIGNING_LABEL

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(e)
    yield e
    e.dispose()


def _device(engine: Engine, device_id: str, model: str) -> None:
    with engine.begin() as c:
        c.execute(
            devices.insert().values(
                device_id=device_id, model=model, segment="home", status="active", created_at=T0
            )
        )


def _reading(
    engine: Engine, device_id: str, seq: int, purpose: str, at: datetime, fields: dict[str, object]
) -> None:
    body = cbor2.dumps({"ts": int(at.timestamp() * 1000), "f": fields, "p": purpose}, canonical=True)
    with engine.begin() as c:
        c.execute(
            readings.insert().values(
                device_id=device_id, epoch=1, seq=seq, topic=f"t/{device_id}", received_at=at, body=body
            )
        )


def test_consent_changes_are_recorded_and_audited(engine: Engine) -> None:
    audit = MemoryAuditSink()
    store = PrivacyStore(engine, audit=audit)
    store.link_device("alice", "d1", T0)
    contract = load_contract("thermo-1")
    store.set_consent("alice", "research", True, T0, actor="alice", contract=contract)
    state = store.set_consent("alice", "research", False, T0 + timedelta(hours=1), actor="alice")
    assert state.version == 2 and not state.decisions["research"].granted
    assert store.consent_state("alice") == state
    assert [e.type for e in audit.events] == ["consent.changed", "consent.changed"]
    assert audit.events[1].details["granted"] is False
    with pytest.raises(PolicyDenied):
        store.set_consent("alice", "marketing", True, T0, actor="alice", contract=contract)


def test_consent_push_and_ack(
    engine: Engine, make_pipeline: Callable[..., PrivacyPipeline], clock: FixedClock
) -> None:
    store = PrivacyStore(engine)
    store.link_device("alice", "dev-1", T0)
    store.set_consent("alice", "research", True, clock.now(), actor="alice")
    (cfg,) = store.consent_configs("alice", clock.now())
    assert store.unacknowledged_consent() == [("dev-1", 1)]
    pipe = make_pipeline("thermo-1")
    ack = pipe.apply_consent_config(cfg)
    store.record_consent_ack(ack, clock.now())
    assert store.unacknowledged_consent() == []
    forged = type(ack)(ack.device_id, ack.version, b"\x00" * 32, ack.applied_at)
    with pytest.raises(ConsentError):
        store.record_consent_ack(forged, clock.now())


def test_receipts_are_verified_stored_and_budget_checked(
    engine: Engine, tmp_path: Path, make_pipeline: Callable[..., PrivacyPipeline], clock: FixedClock
) -> None:
    store = PrivacyStore(engine)
    pipe = make_pipeline("thermo-1", "research")
    ks = SoftwareKeyStore(tmp_path / "dev")
    builder = ReceiptBuilder("dev-1", pipe.contract, pipe.config_sha256)
    builder.add(pipe.process({"temperature": 20.0, "humidity": 40.0}, "research").receipt_entry)
    receipt = builder.seal(ks, clock.now())
    pub = ks.public_key(RECEIPT_SIGNING_LABEL)
    claims = store.store_receipt("dev-1", receipt.encode(), pub, clock.now(), contract=pipe.contract)
    assert claims["epsilon_spent"] == pytest.approx(2.0)
    assert store.receipts_of("dev-1") == [receipt]
    hub_ledger = PrivacyLossLedger(
        SqlLedgerStore(engine), pipe.contract.budget_epsilon, pipe.contract.budget_period
    )
    assert hub_ledger.spent("dev-1", clock.now()) == pytest.approx(2.0)
    with pytest.raises(MalformedError, match="another device"):
        store.store_receipt("dev-2", receipt, pub, clock.now())
    with pytest.raises(MalformedError, match="another data contract"):
        store.store_receipt("dev-1", receipt, pub, clock.now(), contract=load_contract("meter-1"))
    # a device whose receipt admits more than its budget is flagged
    from importlib import resources

    from iotguard.privacy import parse_contract

    text = resources.files("iotguard.privacy").joinpath("contracts", "thermo-1.toml").read_text()
    fast = parse_contract(
        text.replace('retention = "365d"\nmin_interval = "1h"', 'retention = "365d"\nmin_interval = "1m"')
    )
    greedy = make_pipeline("thermo-1", "research", contract=fast, budget=100.0)
    b2 = ReceiptBuilder("dev-1", fast, greedy.config_sha256)
    for _ in range(25):
        b2.add(greedy.process({"temperature": 20.0, "humidity": 40.0}, "research").receipt_entry)
        clock.advance(60)
    with pytest.raises(BudgetExhausted):
        store.store_receipt("dev-1", b2.seal(ks, clock.now()), pub, clock.now(), contract=fast)


def test_retention_deletes_per_purpose_and_audits(engine: Engine) -> None:
    audit = MemoryAuditSink()
    _device(engine, "t1", "thermo-1")
    _device(engine, "m1", "meter-1")
    now = T0 + timedelta(days=100)
    _reading(
        engine, "t1", 1, "heating_control", now - timedelta(days=8), {"temperature": 20.0}
    )  # 7d: gone
    _reading(engine, "t1", 2, "heating_control", now - timedelta(days=6), {"temperature": 20.0})  # kept
    _reading(engine, "t1", 3, "research", now - timedelta(days=90), {"temperature": 20.0})  # 365d: kept
    _reading(engine, "m1", 1, "grid_planning", now - timedelta(days=91), {"power": 250.0})  # 90d: expired
    _reading(engine, "m1", 2, "billing", now - timedelta(days=91), {"power": 250.0})  # 400d: kept
    _reading(engine, "m1", 3, "no-such", now - timedelta(days=31), {"power": 250.0})  # fallback 30d: expired
    report = enforce_retention(engine, now, audit=audit)
    assert report.deleted == {"meter-1/grid_planning": 1, "thermo-1/heating_control": 1}
    assert report.unclassified_deleted == 1 and report.total == 3
    with engine.connect() as c:
        left = sorted((r.device_id, r.seq) for r in c.execute(select(readings.c.device_id, readings.c.seq)))
    assert left == [("m1", 2), ("t1", 2), ("t1", 3)]
    assert audit.events[-1].type == "privacy.retention" and audit.events[-1].details["total"] == 3
    assert enforce_retention(engine, now).total == 0


def test_access_export_then_erasure_with_crypto_shredding(engine: Engine, tmp_path: Path) -> None:
    audit = MemoryAuditSink()
    hub_keys = SoftwareKeyStore(tmp_path / "hub")
    store = PrivacyStore(engine, audit=audit, keystore=hub_keys)
    _device(engine, "w1", "wear-1")
    _device(engine, "w2", "wear-1")
    store.link_device("alice", "w1", T0)
    store.link_device("bob", "w2", T0)
    store.set_consent("alice", "research", True, T0, actor="alice")
    _reading(engine, "w1", 1, "safety", T0, {"heart_rate": 70, "location": "52.520,13.404"})
    _reading(engine, "w2", 1, "safety", T0, {"heart_rate": 90, "location": "48.100,11.500"})
    store.record_contribution("alice", "dp-query-17", "mean heart rate, Berlin", T0)

    doc = store.export_subject("alice", T0)
    assert doc["format"] == "iotguard-subject-export/1"
    assert [r["reading"]["f"]["heart_rate"] for r in doc["readings"]] == [70]  # nothing of bob's
    assert doc["consent"]["current"]["research"]["granted"] is True
    assert doc["aggregates"][0]["aggregate"] == "dp-query-17"

    backup = store.seal_for_subject("alice", b"alice's exported copy", T0)
    assert store.open_for_subject("alice", backup) == b"alice's exported copy"

    record = store.erase_subject("alice", T0 + timedelta(days=1), actor="dpo")
    assert record.readings_deleted == 1 and record.key_shredded and record.aggregates == ("aggregate:dp-query-17",)
    assert store.reading_count(["w1"]) == 0 and store.reading_count(["w2"]) == 1
    assert store.devices_of("alice") == [] and store.consent_state("alice").decisions == {}
    with pytest.raises(KeyStoreError):
        store.open_for_subject("alice", backup)  # the unreachable copy is now unreadable
    assert store.erasures_of("alice") == []  # the proof is kept under the pseudonym only
    assert store.erasures_of(record.pseudonym)[0]["aggregates"] == ["aggregate:dp-query-17"]
    assert audit.events[-1].type == "data.erased"
    assert store.export_subject("alice", T0)["readings"] == []
