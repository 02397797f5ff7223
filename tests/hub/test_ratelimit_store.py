"""One contract for every attempt store and seen-nonce store: memory, SQLite, PostgreSQL.

The SQL stores are what make rate limits, lockouts and nonce replay
protection hold across hub processes; two stores opened on one database
(two engines, as two hub processes have) must see each other's state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.errors import MalformedError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.ratelimit import AttemptLimiter, AttemptLimits, AttemptState, InMemoryAttemptStore, LockedOut
from iotguard.hub.ratelimit_store import SqlAttemptStore, SqlSeenNonces
from iotguard.identity import InMemorySeenNonces

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# A factory returns two handles on one backing store (two "processes" where the backend allows it).
Pair = Callable[[], tuple[object, object]]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def _engines(url: str) -> tuple:
    a, b = make_engine(url), make_engine(url)
    migrate(a)
    return a, b


@pytest.fixture
def attempt_stores(backend: str) -> Iterator[tuple]:
    if backend == "memory":
        store = InMemoryAttemptStore()
        yield store, store
        return
    a, b = _engines(backend)
    yield SqlAttemptStore(a), SqlAttemptStore(b)
    a.dispose()
    b.dispose()


@pytest.fixture
def nonce_stores(backend: str) -> Iterator[tuple]:
    if backend == "memory":
        store = InMemorySeenNonces()
        yield store, store
        return
    a, b = _engines(backend)
    yield SqlSeenNonces(a), SqlSeenNonces(b)
    a.dispose()
    b.dispose()


def test_attempt_store_round_trip_and_atomic_change(attempt_stores: tuple) -> None:
    one, two = attempt_stores
    assert one.get("k") is None
    state = AttemptState(tokens=3.5, refilled_at=NOW, failures=2, lockouts=1,
                         locked_until=NOW + timedelta(minutes=1), last_failure=NOW)
    assert one.update("k", lambda old: (state, old), NOW) is None
    assert two.get("k") == state
    seen = two.update("k", lambda old: (AttemptState(tokens=1.0, refilled_at=NOW), old), NOW)
    assert seen == state and one.get("k") == AttemptState(tokens=1.0, refilled_at=NOW)


def test_attempt_store_change_that_raises_writes_nothing(attempt_stores: tuple) -> None:
    one, _ = attempt_stores

    def refuse(_old: AttemptState | None) -> tuple[AttemptState, None]:
        raise MalformedError("no")

    with pytest.raises(MalformedError):
        one.update("k", refuse, NOW)
    assert one.get("k") is None


def test_lockout_holds_across_processes(attempt_stores: tuple) -> None:
    """Check for lockout evasion by spreading guesses over hub processes."""
    one, two = attempt_stores
    limits = AttemptLimits(max_failures=4, burst=100)
    hub_a, hub_b = AttemptLimiter(limits, one), AttemptLimiter(limits, two)
    for limiter in (hub_a, hub_b, hub_a, hub_b):
        limiter.check("203.0.113.7", NOW)
        limiter.record_failure("203.0.113.7", NOW)
    for limiter in (hub_a, hub_b):
        with pytest.raises(LockedOut):
            limiter.check("203.0.113.7", NOW)
        assert limiter.is_locked("203.0.113.7", NOW)


def test_rate_limit_holds_across_processes(attempt_stores: tuple) -> None:
    one, two = attempt_stores
    limits = AttemptLimits(rate_per_s=0.001, burst=6)
    hub_a, hub_b = AttemptLimiter(limits, one), AttemptLimiter(limits, two)
    for i in range(6):
        (hub_a if i % 2 else hub_b).check("k", NOW)
    with pytest.raises(LockedOut):
        hub_a.check("k", NOW)


def test_concurrent_failures_are_all_counted(attempt_stores: tuple) -> None:
    one, two = attempt_stores
    limiter_a = AttemptLimiter(AttemptLimits(max_failures=1000, burst=1000), one)
    limiter_b = AttemptLimiter(AttemptLimits(max_failures=1000, burst=1000), two)

    def fail(limiter: AttemptLimiter) -> None:
        for _ in range(20):
            limiter.record_failure("k", NOW)

    threads = [threading.Thread(target=fail, args=(lim,)) for lim in (limiter_a, limiter_b, limiter_a, limiter_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = one.get("k")
    assert state is not None and state.failures == 80


def test_nonce_is_remembered_once_across_processes(nonce_stores: tuple) -> None:
    one, two = nonce_stores
    until = NOW + timedelta(minutes=5)
    assert one.remember("dev-1", b"n" * 16, until, NOW)
    assert not two.remember("dev-1", b"n" * 16, until, NOW + timedelta(seconds=1))
    assert two.remember("dev-2", b"n" * 16, until, NOW)
    assert one.remember("dev-1", b"m" * 16, until, NOW)


def test_expired_nonce_is_forgotten(nonce_stores: tuple) -> None:
    one, two = nonce_stores
    assert one.remember("dev-1", b"n" * 16, NOW + timedelta(minutes=5), NOW)
    assert two.remember("dev-1", b"n" * 16, NOW + timedelta(minutes=15), NOW + timedelta(minutes=10))


def test_concurrent_replays_admit_exactly_one(nonce_stores: tuple) -> None:
    one, two = nonce_stores
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def go(store: object) -> None:
        barrier.wait()
        results.append(store.remember("dev-1", b"r" * 16, NOW + timedelta(minutes=5), NOW))  # type: ignore[attr-defined]

    threads = [threading.Thread(target=go, args=(s,)) for s in (one, two) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
