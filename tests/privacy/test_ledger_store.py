"""Ledger-store contract: check-then-spend is atomic in the store (memory, SQLite, PostgreSQL).

Regression for issue 14: two :class:`PrivacyLossLedger` instances over one store
spent 0.8 + 0.8 against a budget of 1.0, because the check was locked per
ledger instance, not in the store.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.errors import BudgetExhausted
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.receipts import SqlLedgerStore
from iotguard.privacy import InMemoryLedgerStore, LedgerStore, PrivacyLossLedger

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    if request.param == "memory":
        yield InMemoryLedgerStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlLedgerStore(engine)
    engine.dispose()


def test_spend_within_refuses_past_the_limit_and_spends_nothing(store: LedgerStore) -> None:
    assert store.spend_within("d1", 7, 600, 1000, "p", T0) == 600
    assert store.spend_within("d1", 7, 600, 1000, "p", T0) is None
    assert store.spent_units("d1", 7) == 600
    assert store.spend_within("d1", 7, 400, 1000, "p", T0) == 1000
    assert store.spend_within("d1", 7, 1, 1000, "p", T0) is None
    assert store.spend_within("d1", 8, 1001, 1000, "p", T0) is None
    assert store.spent_units("d1", 8) == 0
    assert store.spent_units("d2", 7) == 0


def test_two_ledgers_over_one_store_cannot_overspend(store: LedgerStore) -> None:
    """Many ledger instances race 0.8 each against a budget of 1.0: exactly one wins."""
    ledgers = [PrivacyLossLedger(store, 1.0, DAY) for _ in range(6)]
    barrier = threading.Barrier(len(ledgers))
    won: list[float] = []
    refused: list[BaseException] = []

    def spend(ledger: PrivacyLossLedger) -> None:
        barrier.wait()
        try:
            won.append(ledger.charge("d1", 0.8, "telemetry", T0).total)
        except BudgetExhausted as e:
            refused.append(e)

    threads = [threading.Thread(target=spend, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == len(ledgers) - 1
    assert ledgers[0].spent("d1", T0) == pytest.approx(0.8)


class _StaleReads(InMemoryLedgerStore):
    """A store whose reads lag its writes (another hub spent between our read and our write)."""

    def spent_units(self, device_id: str, period: int) -> int:
        return 0


def test_ledger_does_not_trust_a_read_before_its_spend() -> None:
    """Deterministic form of the race: the check must be in the store's spend, not in a prior read."""
    store = _StaleReads()
    a, b = PrivacyLossLedger(store, 1.0, DAY), PrivacyLossLedger(store, 1.0, DAY)
    a.charge("d1", 0.8, "p", T0)
    with pytest.raises(BudgetExhausted):
        b.charge("d1", 0.8, "p", T0)
    assert InMemoryLedgerStore.spent_units(store, "d1", a.period_of(T0)) == 800_000


def test_spend_all_within_is_all_or_nothing(store: LedgerStore) -> None:
    assert store.spend_all_within(["a", "b"], 7, 600, 1000, "p", T0)
    assert store.spend_within("c", 7, 900, 1000, "p", T0) == 900
    assert not store.spend_all_within(["a", "b", "c", "d"], 7, 300, 1000, "p", T0)
    assert [store.spent_units(x, 7) for x in "abcd"] == [600, 600, 900, 0]
    assert store.spend_all_within(["a", "d"], 7, 400, 1000, "p", T0)
    assert [store.spent_units(x, 7) for x in "abcd"] == [1000, 600, 900, 400]


def test_concurrent_central_queries_cannot_overspend(store: LedgerStore) -> None:
    ledgers = [PrivacyLossLedger(store, 1.0, DAY) for _ in range(4)]
    barrier = threading.Barrier(len(ledgers))
    won: list[int] = []

    def spend(ledger: PrivacyLossLedger) -> None:
        barrier.wait()
        with contextlib.suppress(BudgetExhausted):
            won.append(ledger.charge_all(["x", "y", "z"], 0.6, "research", T0))

    threads = [threading.Thread(target=spend, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won == [3]
    assert all(ledgers[0].spent(s, T0) == pytest.approx(0.6) for s in "xyz")
