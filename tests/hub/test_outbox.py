"""The transactional outbox: one contract for every store, then delivery through the drainer."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iotguard.clock import FixedClock
from iotguard.errors import StorageError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.outbox import (
    MemoryOutboxStore,
    OutboxDrainer,
    OutboxMessage,
    OutboxRow,
    OutboxStore,
    SqlOutboxStore,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def _sql_store(url: str) -> SqlOutboxStore:
    engine = make_engine(url)
    migrate(engine)
    return SqlOutboxStore(engine)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def outbox_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OutboxStore]:
    if request.param == "memory":
        yield MemoryOutboxStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = _sql_store(url)
    yield store
    store.engine.dispose()


def _msgs(*payloads: bytes, kind: str = "test.kind") -> list[OutboxMessage]:
    return [OutboxMessage(kind, p) for p in payloads]


# -- contract --------------------------------------------------------------


def test_claim_returns_pending_rows_oldest_first(outbox_store: OutboxStore) -> None:
    ids = outbox_store.enqueue(_msgs(b"a", b"b", b"c"), T0)
    rows = outbox_store.claim(["test.kind"], "w1", T0, limit=2, lease=LEASE)
    assert [r.id for r in rows] == ids[:2] and [r.payload for r in rows] == [b"a", b"b"]
    assert all(r.attempts == 1 for r in rows)
    assert outbox_store.pending() == 3


def test_claimed_rows_are_not_claimed_again_within_the_lease(outbox_store: OutboxStore) -> None:
    outbox_store.enqueue(_msgs(b"a", b"b"), T0)
    first = outbox_store.claim(["test.kind"], "w1", T0, limit=10, lease=LEASE)
    assert len(first) == 2
    assert outbox_store.claim(["test.kind"], "w2", T0 + timedelta(seconds=1), limit=10, lease=LEASE) == []


def test_lease_expiry_lets_another_worker_take_over(outbox_store: OutboxStore) -> None:
    """A process that claimed rows and died: after the lease another process delivers them."""
    outbox_store.enqueue(_msgs(b"a"), T0)
    outbox_store.claim(["test.kind"], "dead", T0, limit=10, lease=LEASE)
    again = outbox_store.claim(["test.kind"], "alive", T0 + LEASE + timedelta(seconds=1), limit=10, lease=LEASE)
    assert [r.payload for r in again] == [b"a"] and again[0].attempts == 2


def test_only_requested_kinds_are_claimed(outbox_store: OutboxStore) -> None:
    outbox_store.enqueue(_msgs(b"x", kind="consent.push") + _msgs(b"y", kind="audit.event"), T0)
    rows = outbox_store.claim(["audit.event"], "cli", T0, limit=10, lease=LEASE)
    assert [r.kind for r in rows] == ["audit.event"]
    assert outbox_store.pending(["consent.push"]) == 1


def test_confirm_succeeds_once(outbox_store: OutboxStore) -> None:
    ids = outbox_store.enqueue(_msgs(b"a", b"b"), T0)
    outbox_store.claim(["test.kind"], "w", T0, limit=10, lease=LEASE)
    assert outbox_store.confirm(ids, T0) is True
    assert outbox_store.confirm(ids, T0) is False  # a second deliverer learns it was late
    assert outbox_store.pending() == 0
    assert outbox_store.claim(["test.kind"], "w", T0 + timedelta(hours=1), limit=10, lease=LEASE) == []


def test_failed_delivery_is_retried_after_the_delay(outbox_store: OutboxStore) -> None:
    ids = outbox_store.enqueue(_msgs(b"a"), T0)
    outbox_store.claim(["test.kind"], "w", T0, limit=10, lease=LEASE)
    outbox_store.fail(ids, "storage_error", T0, timedelta(seconds=4))
    assert outbox_store.claim(["test.kind"], "w", T0 + timedelta(seconds=2), limit=10, lease=LEASE) == []
    assert len(outbox_store.claim(["test.kind"], "w", T0 + timedelta(seconds=5), limit=10, lease=LEASE)) == 1


def test_oversized_payload_is_refused() -> None:
    from iotguard.errors import MalformedError

    with pytest.raises(MalformedError):
        OutboxMessage("test.kind", b"\x00" * (64 * 1024 + 1))


# -- drainer ---------------------------------------------------------------


class _Recorder:
    kinds = ("test.kind",)

    def __init__(self, fail_times: int = 0) -> None:
        self.seen: list[bytes] = []
        self.fail_times = fail_times

    def deliver(self, rows: Sequence[OutboxRow], confirm: Callable[[Any], bool]) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise StorageError("broker directory not writable")
        self.seen += [r.payload for r in rows]
        confirm(None)


def test_crash_between_commit_and_delivery_delivers_later_once(tmp_path: Path) -> None:
    """The change and its outbox row committed, then the process died before delivering:
    the next drainer (another process) delivers the row, exactly once."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    writer = _sql_store(url)
    writer.enqueue(_msgs(b"revoked dev-1"), T0)
    writer.engine.dispose()  # the process that committed is gone
    recorder = _Recorder()
    drainer = OutboxDrainer(_sql_store(url), [recorder], worker="hub-2", clock=FixedClock(T0))
    assert drainer.drain() == 1
    assert drainer.drain() == 0
    assert recorder.seen == [b"revoked dev-1"]


def test_failing_handler_does_not_lose_the_row(outbox_store: OutboxStore) -> None:
    clock = FixedClock(T0)
    recorder = _Recorder(fail_times=1)
    outbox_store.enqueue(_msgs(b"a"), T0)
    drainer = OutboxDrainer(outbox_store, [recorder], clock=clock)
    assert drainer.drain() == 0 and outbox_store.pending() == 1
    clock.advance(10)
    assert drainer.drain() == 1 and recorder.seen == [b"a"] and outbox_store.pending() == 0


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_drainers_deliver_each_row_once(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """N hub processes drain one outbox concurrently (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: one
    claiming UPDATE under the write lock): no row twice, none lost."""
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'hub.db'}"
    store = _sql_store(url)
    store.enqueue([OutboxMessage("test.kind", str(i).encode()) for i in range(300)], T0)
    recorders = [_Recorder(), _Recorder()]
    drainers = [OutboxDrainer(_sql_store(url), [rec], worker=f"hub-{i}", batch=7)
                for i, rec in enumerate(recorders)]
    threads = [threading.Thread(target=d.drain) for d in drainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = recorders[0].seen + recorders[1].seen
    assert len(seen) == 300 and len(set(seen)) == 300
    assert store.pending() == 0


def test_delivered_rows_are_purged_after_their_retention(outbox_store: OutboxStore) -> None:
    ids = outbox_store.enqueue(_msgs(b"a", b"b"), T0)
    outbox_store.claim(["test.kind"], "w", T0, limit=1, lease=LEASE)
    outbox_store.confirm(ids[:1], T0)
    assert outbox_store.purge_delivered(T0) == 0  # delivered at T0, not before
    assert outbox_store.purge_delivered(T0 + timedelta(days=8)) == 1
    assert outbox_store.pending() == 1  # undelivered rows are never purged
