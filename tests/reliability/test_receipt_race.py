"""Two hub processes storing the same privacy receipt at the same instant store it once (ADR 1504:
a unique index on (device, signature), migration 1510; the read-then-insert of ADR 1502 alone let
both insert)."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.clock import FixedClock
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import MIGRATIONS, migrate
from iotguard.hub.stores.receipts import RECEIPT_ONCE_INDEX, SqlReceiptStore, receipts
from iotguard.keys import SoftwareKeyStore
from iotguard.privacy import (
    ConsentState,
    DataContract,
    InMemoryLedgerStore,
    PrivacyLossLedger,
    PrivacyPipeline,
    PseudonymKeyring,
    ReceiptBuilder,
    load_contract,
)
from iotguard.privacy.receipt import RECEIPT_SIGNING_LABEL

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _receipt(tmp_path: Path) -> tuple[bytes, bytes, DataContract]:
    contract = load_contract("thermo-1")
    pipe = PrivacyPipeline(contract, ConsentState("alice").grant("research", T0),
                           PseudonymKeyring(bytes(range(32)), contract.pseudonym_rotation),
                           PrivacyLossLedger(InMemoryLedgerStore(), contract.budget_epsilon, contract.budget_period),
                           FixedClock(T0), device_id="d1", rng=random.Random(1))
    ks = SoftwareKeyStore(tmp_path / "device-keys", device_binding=b"race-test-device")
    builder = ReceiptBuilder("d1", contract, pipe.config_sha256)
    builder.add(pipe.process({"temperature": 20.0, "humidity": 40.0}, "research").receipt_entry)
    return builder.seal(ks, T0).encode(), ks.public_key(RECEIPT_SIGNING_LABEL), contract


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _count(engine: object) -> int:
    with engine.connect() as c:  # type: ignore[attr-defined]
        return int(c.execute(select(func.count()).select_from(receipts)).scalar() or 0)


def test_two_hub_processes_racing_one_receipt_store_it_once(url: str, tmp_path: Path) -> None:
    receipt, pub, contract = _receipt(tmp_path)
    migrate(make_engine(url))
    engines = [make_engine(url) for _ in range(4)]  # each its own pool, as separate hub processes have
    stores = [SqlReceiptStore(e) for e in engines]
    # Both see no receipt held before either inserts: the read of ADR 1502 alone would let both insert.
    seen = threading.Barrier(len(stores))
    real_store_once = SqlReceiptStore._store_once

    def store_once_after_all_looked(self: SqlReceiptStore, *args: object) -> bool:
        if not getattr(threading.current_thread(), "raced", False):
            threading.current_thread().raced = True  # type: ignore[attr-defined]
            seen.wait(timeout=30)
        return real_store_once(self, *args)  # type: ignore[arg-type]

    errors: list[BaseException] = []
    results: list[dict[str, object]] = []

    def store(s: SqlReceiptStore) -> None:
        try:
            results.append(s.store_receipt("d1", receipt, pub, T0, contract=contract))
        except BaseException as exc:
            errors.append(exc)

    SqlReceiptStore._store_once = store_once_after_all_looked  # type: ignore[method-assign,assignment]
    try:
        threads = [threading.Thread(target=store, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        SqlReceiptStore._store_once = real_store_once  # type: ignore[method-assign]
    assert errors == [] and len(results) == len(stores)
    assert _count(engines[0]) == 1, "one receipt stored more than once"
    assert stores[0].spent_units("d1", int(results[0]["period"])) > 0  # type: ignore[call-overload]
    for e in engines:
        e.dispose()


def test_the_database_itself_refuses_a_second_copy_of_a_receipt(url: str, tmp_path: Path) -> None:
    receipt, pub, contract = _receipt(tmp_path)
    engine = make_engine(url)
    migrate(engine)
    SqlReceiptStore(engine).store_receipt("d1", receipt, pub, T0, contract=contract)
    with engine.connect() as c:
        row = dict(c.execute(select(receipts).where(receipts.c.device_id == "d1")).mappings().one())
    row.pop("id")
    with pytest.raises(SqlIntegrityError), engine.begin() as c:
        c.execute(insert(receipts).values(**row))
    engine.dispose()


def test_the_migration_keeps_the_first_of_receipts_stored_twice_before_it(url: str, tmp_path: Path) -> None:
    receipt, pub, contract = _receipt(tmp_path)
    engine = make_engine(url)
    migrate(engine, [m for m in MIGRATIONS if m.id != "1510_receipt_once"])
    SqlReceiptStore(engine).store_receipt("d1", receipt, pub, T0, contract=contract)
    with engine.connect() as c:
        row = dict(c.execute(select(receipts)).mappings().one())
    first = row.pop("id")
    with engine.begin() as c:  # the race of ADR 1502 happened before the index existed
        c.execute(insert(receipts).values(**row))
    assert _count(engine) == 2
    assert migrate(engine) == ["1510_receipt_once"]
    with engine.connect() as c:
        assert [r for (r,) in c.execute(select(receipts.c.id))] == [first]
    assert RECEIPT_ONCE_INDEX
    engine.dispose()
