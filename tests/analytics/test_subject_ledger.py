"""One privacy-loss ledger per subject: local DP (receipts), central queries and federated learning add up;
the ledger refuses the release that would pass the budget across all three; a refused release spends
nothing; two ledgers over one store cannot overspend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.analytics import (
    CentralQuery,
    InMemorySubjectLedgerStore,
    SubjectLedger,
    SubjectLedgerStore,
    release,
    zcdp_epsilon,
)
from iotguard.clock import FixedClock
from iotguard.errors import BudgetExhausted, ConfigError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.consent import SqlConsentStore
from iotguard.hub.stores.receipts import SqlLedgerStore, SqlReceiptStore
from iotguard.hub.stores.subject_ledger import SqlSubjectLedgerStore
from iotguard.keys import SoftwareKeyStore
from iotguard.privacy import PrivacyPipeline, ReceiptBuilder
from iotguard.privacy.ledger import EPSILON_RESOLUTION
from iotguard.privacy.receipt import RECEIPT_SIGNING_LABEL

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
PERIOD = 20454  # 2026-01-01 in days since the epoch


@dataclass
class Ledgers:
    store: SubjectLedgerStore
    link: Callable[[str, str], None]
    local: Callable[[str, int, float], None]  # a device receipt's period total, in epsilon


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledgers]:
    if request.param == "memory":
        mem = InMemorySubjectLedgerStore()
        yield Ledgers(mem, mem.link, lambda d, p, e: mem.record_local(d, p, round(e / EPSILON_RESOLUTION)))
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    consent = SqlConsentStore(engine)
    receipts = SqlLedgerStore(engine)  # the table the receipt store raises to each receipt's period total

    def local(device: str, period: int, epsilon: float) -> None:
        units = round(epsilon / EPSILON_RESOLUTION) - receipts.spent_units(device, period)
        receipts.add_units(device, period, units, "ldp", T0)

    yield Ledgers(SqlSubjectLedgerStore(engine), lambda s, d: consent.link_device(s, d, T0), local)
    engine.dispose()


def test_a_retried_release_under_one_once_key_charges_each_subject_once(ledgers: Ledgers) -> None:
    """A federated round that failed released nothing: its retry for the same model version is not charged
    again (``once`` key), while a new subject in the retry is charged and a different key charges anew."""
    ledger = SubjectLedger(ledgers.store, 1.0, DAY)
    key = "learn:run-1:v0"
    assert ledger.charge_all(["alice", "bob"], 0.4, "federated", "learn:run-1", T0, once=key) == 2
    assert ledger.charge_all(["alice", "bob", "carol"], 0.4, "federated", "learn:run-1", T0, once=key) == 3
    assert ledger.charge_all(["alice", "bob"], 0.4, "federated", "learn:run-1", T0, once=key) == 2
    assert ledger.charged_once(key) == {"alice", "bob", "carol"} and ledger.charged_once("other") == set()
    for s in ("alice", "bob", "carol"):
        assert ledger.statement(s)[0].federated == pytest.approx(0.4), s
    # a subject charged under the key is not held back by what is left of its budget
    ledger.charge_all(["alice"], 0.5, "central", "a query", T0)  # alice: 0.9 of 1.0
    assert ledger.charge_all(["alice", "bob"], 0.4, "federated", "learn:run-1", T0, once=key) == 2
    # the next version is a new key; a refused keyed charge records no subject under it
    with pytest.raises(BudgetExhausted):
        ledger.charge_all(["alice", "bob"], 0.4, "federated", "learn:run-1", T0, once="learn:run-1:v1")
    assert ledger.charged_once("learn:run-1:v1") == set()
    ledger.charge_all(["bob"], 0.4, "federated", "learn:run-1", T0, once="learn:run-1:v1")
    assert ledger.statement("bob")[0].federated == pytest.approx(0.8)
    with pytest.raises(ConfigError):
        ledger.charge_all(["bob"], 0.1, "federated", "p", T0, once="k" * 201)


def test_the_ledger_refuses_the_release_past_the_budget_across_all_three_kinds(ledgers: Ledgers) -> None:
    ledger = SubjectLedger(ledgers.store, 1.0, DAY)
    assert ledger.period_of(T0) == PERIOD
    ledgers.link("alice", "t1")
    ledgers.link("alice", "t2")
    ledgers.local("t1", PERIOD, 0.2)  # two devices' local DP: 0.2 + 0.1
    ledgers.local("t2", PERIOD, 0.1)
    ledger.charge_all(["alice", "bob"], 0.3, "central", "research", T0)
    ledger.charge_all(["alice"], 0.3, "federated", "model-training", T0)
    with pytest.raises(BudgetExhausted):
        ledger.charge_all(["alice", "bob"], 0.2, "central", "research", T0)  # alice at 0.9 + 0.2
    # refused: nobody was charged, not even bob with budget left
    line = ledger.statement("alice")[0]
    assert (line.period, line.local, line.central, line.federated) == (PERIOD, pytest.approx(0.3),
                                                                       pytest.approx(0.3), pytest.approx(0.3))
    assert ledger.statement("bob")[0].total == pytest.approx(0.3)
    ledger.charge_all(["alice", "bob"], 0.1, "federated", "model-training", T0)  # exactly to the budget
    assert ledger.remaining("alice", T0) == pytest.approx(0.0)
    with pytest.raises(BudgetExhausted):
        ledger.charge_all(["alice"], 1e-6, "central", "research", T0)
    # a local-DP receipt that arrives later still counts (nothing masks it): the next period is fresh
    ledgers.local("t1", PERIOD + 1, 0.9)
    with pytest.raises(BudgetExhausted):
        ledger.charge_all(["alice"], 0.2, "central", "research", T0 + DAY)
    ledger.charge_all(["alice"], 0.1, "central", "research", T0 + DAY)
    # a device linked to no subject is its own subject
    ledgers.local("lonely", PERIOD, 0.95)
    with pytest.raises(BudgetExhausted):
        ledger.charge_all(["lonely"], 0.1, "central", "research", T0)


def test_two_ledgers_over_one_store_cannot_overspend(ledgers: Ledgers) -> None:
    """Six ledgers race 0.6 each (central and federated) against a budget of 1.0 with 0.3 local: one wins."""
    ledgers.link("carol", "c1")
    ledgers.local("c1", PERIOD, 0.3)
    racers = [SubjectLedger(ledgers.store, 1.0, DAY) for _ in range(6)]
    barrier = threading.Barrier(len(racers))
    won: list[int] = []

    def spend(i: int) -> None:
        barrier.wait()
        try:
            racers[i].charge_all(["carol", f"other-{i}"], 0.6, ("central", "federated")[i % 2], "p", T0)
            won.append(i)
        except BudgetExhausted:
            pass

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(len(racers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert racers[0].statement("carol")[0].total == pytest.approx(0.9)


def test_a_receipt_after_a_central_spend_is_not_masked(tmp_path: Path, clock: FixedClock,
                                                       make_pipeline: Callable[..., PrivacyPipeline]) -> None:
    """Regression (issue 14): central spends sat in the row a receipt's period total was compared with.

    Receipt total 2.0, central 1.0, then a receipt with period total 4.0: the subject has spent 5.0. The
    old single row read 4.0 (the receipt's 4.0 > 3.0 raised it by only 1.0) and let 0.5 more through.
    """
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    SqlConsentStore(engine).link_device("alice", "dev-1", T0)
    ledger = SubjectLedger(SqlSubjectLedgerStore(engine), 5.0, DAY)
    receipts = SqlReceiptStore(engine)
    pipe = make_pipeline("thermo-1", "research")
    ks = SoftwareKeyStore(tmp_path / "dev")

    def receipt() -> None:
        builder = ReceiptBuilder("dev-1", pipe.contract, pipe.config_sha256)
        builder.add(pipe.process({"temperature": 20.0, "humidity": 40.0}, "research").receipt_entry)
        r = builder.seal(ks, clock.now())
        receipts.store_receipt("dev-1", r.encode(), ks.public_key(RECEIPT_SIGNING_LABEL), clock.now(),
                               contract=pipe.contract)

    receipt()
    now = clock.now()
    ledger.charge_all(["alice"], 1.0, "central", "research", now)
    clock.advance(3600)
    receipt()
    line = ledger.statement("alice")[0]
    assert (line.local, line.central, line.total) == (pytest.approx(4.0), pytest.approx(1.0), pytest.approx(5.0))
    with pytest.raises(BudgetExhausted):
        ledger.charge_all(["alice"], 0.5, "central", "research", clock.now())
    engine.dispose()


def test_central_release_charges_the_subject_ledger_and_a_refused_query_spends_nothing() -> None:
    store = InMemorySubjectLedgerStore()
    ledger = SubjectLedger(store, 1.0, DAY)
    rows = [(f"s{i}", float(i)) for i in range(10)]
    store.record_local("s3", PERIOD, round(0.5 / EPSILON_RESOLUTION))  # s3's device: local DP
    release(CentralQuery("count", 0.4), rows, ledger.for_source("central"), "research", T0)
    with pytest.raises(BudgetExhausted):
        release(CentralQuery("sum", 0.2, lo=0.0, hi=10.0), rows, ledger.for_source("central"), "research", T0)
    assert ledger.statement("s0")[0].total == pytest.approx(0.4)
    assert ledger.statement("s3")[0].total == pytest.approx(0.9)


def test_only_central_and_federated_are_charged_and_zcdp_converts() -> None:
    ledger = SubjectLedger(InMemorySubjectLedgerStore(), 1.0, DAY)
    with pytest.raises(ConfigError):
        ledger.for_source("local")
    with pytest.raises(ConfigError):
        ledger.charge_all(["a"], 0.1, "local", "p", T0)
    # rho-zCDP -> (rho + 2 sqrt(rho ln(1/delta)), delta)-DP
    assert zcdp_epsilon(0.01, 1e-5) == pytest.approx(0.01 + 2 * (0.01 * 11.512925)**0.5, rel=1e-6)
    with pytest.raises(ConfigError):
        zcdp_epsilon(0.0, 1e-5)


def test_erasure_forgets_the_subjects_ledger_rows(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    store = SqlSubjectLedgerStore(engine)
    ledger = SubjectLedger(store, 1.0, DAY)
    ledger.charge_all(["alice", "bob"], 0.3, "central", "research", T0)
    with engine.begin() as c:
        assert store.forget_subject(c, "alice") == 1
    assert ledger.statement("alice") == [] and ledger.statement("bob")[0].central == pytest.approx(0.3)
    engine.dispose()
