"""The log over every LogStore: memory, SQLite, and a throwaway PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.audit import (
    AuditEvent,
    EventType,
    MemoryLogStore,
    TransparencyLog,
    merkle,
    open_checkpoint,
)
from iotguard.audit.note import NoteSigner
from iotguard.hub.audit_store import create_audit_tables, open_audit_log
from iotguard.hub.db import make_engine
from iotguard.keys.keystore import KeyKind
from iotguard.keys.software import SoftwareKeyStore

ORIGIN = "test.iotguard/audit"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def event(i: int, subject: str = "dev-1") -> AuditEvent:
    return AuditEvent(EventType.AUTH_FAILED, T0 + timedelta(seconds=i), "hub.api", subject, {"n": i})


def _sql_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _migrated(url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    with engine.begin() as conn:
        create_audit_tables(conn)
    return engine


STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[TransparencyLog, str | None]:
    keys = SoftwareKeyStore(tmp_path / "keys")
    if request.param == "memory":
        keys.generate("audit-log", KeyKind.ED25519)
        return TransparencyLog(MemoryLogStore(), NoteSigner(keys, "audit-log", ORIGIN)), None
    url = _sql_url(request.param, tmp_path, request)
    return open_audit_log(_migrated(url), keys, ORIGIN), url


@pytest.fixture
def log(log_url: tuple[TransparencyLog, str | None]) -> TransparencyLog:
    return log_url[0]


def test_roots_and_proofs_match_the_reference_at_every_size(log: TransparencyLog) -> None:
    reference: list[bytes] = []
    i = 0
    for batch in (1, 2, 1, 5, 8, 16, 3, 31, 64, 1, 130):
        events = [event(i + j) for j in range(batch)]
        i += batch
        first = log.append(events)
        assert first == len(reference)
        reference.extend(merkle.leaf_hash(e.to_cbor()) for e in events)
        assert log.size() == len(reference)
        assert log.root_hash() == merkle.root_hash(reference)
    n = len(reference)
    for size in (1, 2, 3, 7, 16, 17, 100, 255, 256, n):
        assert log.root_hash(size) == merkle.root_hash(reference[:size])
        for index in {0, size // 2, size - 1}:
            assert log.inclusion_proof(index, size) == merkle.inclusion_proof(reference[:size], index)
        for old in {1, size // 3 or 1, size - 1 or 1, size}:
            assert log.consistency_proof(old, size) == merkle.consistency_proof(reference[:size], old)
    assert log.leaf_hash(5) == reference[5]
    assert [AuditEvent.from_cbor(e) for e in log.entries(3, 6)] == [event(k) for k in (3, 4, 5)]


def test_checkpoints_are_signed_stored_and_idempotent(log: TransparencyLog) -> None:
    log.append([event(i) for i in range(10)])
    note = log.publish_checkpoint()
    assert log.publish_checkpoint() == note
    cp, _ = open_checkpoint(note, log.verifier)
    assert (cp.origin, cp.size, cp.root) == (ORIGIN, 10, log.root_hash())
    log.append([event(10)])
    newer = log.publish_checkpoint()
    assert log.latest_checkpoint() == newer
    assert log.checkpoint_at(10) == note
    assert log.verify_checkpoint(note).size == 10


def test_subject_lookup(log: TransparencyLog) -> None:
    log.append([event(i, subject=f"dev-{i % 3}") for i in range(30)])
    assert log.find_subject("dev-1") == list(range(1, 30, 3))
    assert log.find_subject("nobody") == []


def test_concurrent_appenders_never_fork(log: TransparencyLog) -> None:
    """Threads appending at once get one order: every leaf once, one consistent tree."""

    def worker(w: int) -> None:
        for b in range(10):
            log.append([event(w * 1000 + b * 10 + j) for j in range(7)])

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = log.size()
    assert n == 4 * 10 * 7
    leaves = log.entries(0, n)
    assert len({bytes(x) for x in leaves}) == n
    assert log.root_hash() == merkle.root_hash([merkle.leaf_hash(x) for x in leaves])


def _process_appender(url: str, keys_dir: str, w: int) -> None:
    engine = make_engine(url)
    log = open_audit_log(engine, SoftwareKeyStore(keys_dir), ORIGIN, create_key=False)
    for b in range(15):
        log.append([event(w * 1000 + b * 10 + j) for j in range(5)])


def test_appenders_in_several_processes_keep_one_order(
    log_url: tuple[TransparencyLog, str | None], tmp_path: Path
) -> None:
    log, url = log_url
    if url is None:
        pytest.skip("the memory store lives in one process")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_appender, args=(url, str(tmp_path / "keys"), w)) for w in range(3)]
    start = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert time.monotonic() - start < 60
    n = log.size()
    assert n == 3 * 15 * 5
    leaves = log.entries(0, n)
    assert len(set(leaves)) == n
    assert log.root_hash() == merkle.root_hash([merkle.leaf_hash(x) for x in leaves])
    assert log.inclusion_proof(n // 2) == merkle.inclusion_proof(
        [merkle.leaf_hash(x) for x in leaves], n // 2
    )
