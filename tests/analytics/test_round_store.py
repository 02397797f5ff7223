"""Aggregation rounds every hub process sees (ADR 0414): the round-store contract on memory, SQLite and
PostgreSQL; two aggregation services over one database run one round (each device step to either); a
service started mid-round (a restarted hub) resumes it; the stored log holds no device value and the
HE hub key share only sealed."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from iotguard.agent.secagg import HeClient, RoundClient
from iotguard.analytics.he_round import open_result
from iotguard.analytics.rlwe import RlweParams, keygen_share
from iotguard.analytics.secagg import AggregationError
from iotguard.audit.log import MemoryAuditSink
from iotguard.clock import FixedClock
from iotguard.errors import MalformedError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.services.aggregation import SecureAggregationService
from iotguard.hub.stores.aggregation_rounds import (
    MAX_EVENT_BYTES,
    MAX_SPEC_BYTES,
    RoundStore,
    SqlRoundStore,
    StoredRound,
    round_events,
    rounds,
)
from iotguard.hub.stores.aggregation_rounds_memory import MemoryRoundStore
from iotguard.identity import VerifiedRequest
from iotguard.keys.software import SoftwareKeyStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _engine(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> Engine:
    url = f"sqlite:///{tmp_path / 'hub.db'}" if kind == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    return engine


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoundStore]:
    if request.param == "memory":
        yield MemoryRoundStore()
        return
    engine = _engine(request, tmp_path, request.param)
    yield SqlRoundStore(engine)
    engine.dispose()


def _rid() -> str:
    return secrets.token_hex(16)


def test_round_store_contract(store: RoundStore) -> None:
    a = StoredRound(_rid(), "secure", b"spec-a", T0)
    store.create(a, "advertise", max_running=2, keep_finished=2)
    assert store.get(a.round_id) == a and store.get(_rid()) is None
    with store.step(_rid()) as none:
        assert none is None
    with store.step(a.round_id) as tx:
        assert tx is not None and tx.version == 0 and tx.round == a and tx.events_after(0) == []
        tx.append("advertise", "d1", b"keys", T0, "advertise")
        tx.append("tick", "", b"", T0 + timedelta(seconds=1), "share")
        assert [e.seq for e in tx.events_after(0)] == [1, 2]
    # a step that fails appends nothing
    with pytest.raises(RuntimeError), store.step(a.round_id) as tx:
        assert tx is not None
        tx.append("shares", "d1", b"boxes", T0, "failed")
        raise RuntimeError("refused")
    with store.step(a.round_id) as tx:
        assert tx is not None and tx.version == 2
        events = tx.events_after(0)
        assert [(e.seq, e.kind, e.device_id, e.message, e.at) for e in events] == [
            (1, "advertise", "d1", b"keys", T0), (2, "tick", "", b"", T0 + timedelta(seconds=1))]
        assert [e.seq for e in tx.events_after(1)] == [2] and tx.events_after(2) == []
    assert store.phases() == {"share": 1}
    # sizes and kinds are bounded
    with pytest.raises(MalformedError), store.step(a.round_id) as tx:
        assert tx is not None
        tx.append("masked", "d1", b"x" * (MAX_EVENT_BYTES + 1), T0, "masked")
    with pytest.raises(MalformedError), store.step(a.round_id) as tx:
        assert tx is not None
        tx.append("value", "d1", b"", T0, "masked")
    with pytest.raises(MalformedError):
        store.create(StoredRound(_rid(), "secure", b"x" * (MAX_SPEC_BYTES + 1), T0), "advertise", max_running=9,
                     keep_finished=2)
    # running rounds are limited; finished ones beyond the newest keep_finished are forgotten
    b = StoredRound(_rid(), "he", b"spec-b", T0 + timedelta(minutes=1))
    store.create(b, "submit", max_running=2, keep_finished=2)
    with pytest.raises(MalformedError, match="too many"):
        store.create(StoredRound(_rid(), "secure", b"c", T0), "advertise", max_running=2, keep_finished=2)
    for r in (a, b):
        with store.step(r.round_id) as tx:
            assert tx is not None
            tx.append("tick", "", b"", T0, "done")
    c = StoredRound(_rid(), "secure", b"c", T0 + timedelta(minutes=2))
    store.create(c, "advertise", max_running=2, keep_finished=2)
    assert store.get(a.round_id) is None and store.get(b.round_id) == b  # the older finished one went
    assert store.phases() == {"done": 1, "advertise": 1}


def test_steps_on_one_round_from_two_stores_are_serialised(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    engine = _engine(request, tmp_path, "postgresql")
    one, two = SqlRoundStore(engine), SqlRoundStore(make_engine(str(engine.url.render_as_string(False))))
    rid = _rid()
    one.create(StoredRound(rid, "secure", b"s", T0), "advertise", max_running=4, keep_finished=4)

    def appender(s: SqlRoundStore, who: str) -> None:
        for i in range(20):
            with s.step(rid) as tx:
                assert tx is not None
                seen = len(tx.events_after(0))
                assert seen == tx.version  # nobody appended between our read and our write
                tx.append("advertise", f"{who}{i}", b"", T0, "advertise")

    threads = [threading.Thread(target=appender, args=(s, w)) for s, w in ((one, "a"), (two, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with one.step(rid) as tx:
        assert tx is not None and tx.version == 40 and [e.seq for e in tx.events_after(0)] == list(range(1, 41))
    two.engine.dispose()
    engine.dispose()


def _send(services: list[SecureAggregationService], device: str) -> Any:
    pick = cycle(services)

    def send(body: dict[str, Any]) -> dict[str, Any]:
        req = VerifiedRequest("aggregate", device, T0, secrets.token_bytes(16), body, b"")
        return next(pick).device_step(req)

    return send


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_two_hub_processes_run_one_round_and_a_restarted_hub_resumes_it(
        request: pytest.FixtureRequest, tmp_path: Path, db: str) -> None:
    engine = _engine(request, tmp_path, db)
    clock = FixedClock(T0)
    a, b = (SecureAggregationService(MemoryAuditSink(), clock, SqlRoundStore(engine)) for _ in range(2))
    devices = [f"dev-{i}" for i in range(6)]
    rid = a.start(devices, 16, phase_timeout_s=60, actor="analyst")
    rng = np.random.default_rng(5)
    values = {d: rng.integers(0, 1 << 16, 16, dtype=np.uint32) for d in devices}
    # each device's consecutive requests alternate between the two processes; devices start on different ones
    clients = {d: RoundClient(_send([a, b] if i % 2 else [b, a], d), rid, values[d]) for i, d in enumerate(devices)}
    for c in clients.values():
        c.step()  # advertise
    assert b.status(rid, actor="analyst")["phase"] == "share"
    for c in clients.values():
        c.step()  # share boxes
    # the hub restarts mid-round: a fresh process over the same database carries on, a third of devices drop
    c_ = SecureAggregationService(MemoryAuditSink(), clock, SqlRoundStore(engine))
    dropped = {"dev-1", "dev-4"}
    for d, c in clients.items():
        c._send = _send([c_, a], d)
        if d not in dropped:
            c.step()  # masked vector
    clock.advance(61)  # the dropped never send: the deadline closes the phase
    for d, c in clients.items():
        if d not in dropped:
            c.step()  # unmask shares
    out = b.status(rid, actor="analyst")
    assert out["phase"] == "done" and out["survivors"] == 4
    expected = sum((values[d].astype(np.uint64) for d in devices if d not in dropped), np.zeros(16, np.uint64))
    assert out["sum"] == [int(x) for x in expected % (1 << 32)]
    assert a.status(rid, actor="analyst")["sum"] == out["sum"] == c_.status(rid, actor="analyst")["sum"]
    # a step refused in one process is refused in the other: the round is one
    with pytest.raises(AggregationError, match="wrong_phase"):
        clients["dev-0"]._request("masked", b"")
    # what the database holds is what the hub may hold: no device value in any logged message
    with engine.connect() as conn:
        logged = [bytes(m) for (m,) in conn.execute(select(round_events.c.message)
                                                    .where(round_events.c.round_id == rid))]
    assert len(logged) > 3 * len(devices)
    for v in values.values():
        for blob in logged:
            assert v.astype("<u4").tobytes() not in blob and v.astype(">u4").tobytes() not in blob
    assert a.phases() == b.phases() == {"done": 1}
    engine.dispose()


def _decryptor_part() -> tuple[Any, bytes, bytes]:
    seed = secrets.token_bytes(32)
    share, part = keygen_share("decryptor", seed)
    return share, seed, part.astype("<u4").tobytes()


def test_an_he_round_spans_hub_processes_and_its_hub_key_share_is_stored_sealed(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    engine = _engine(request, tmp_path, "sqlite")
    keystore = SoftwareKeyStore(tmp_path / "keys")
    clock = FixedClock(T0)
    a, b = (SecureAggregationService(MemoryAuditSink(), clock, SqlRoundStore(engine), keystore) for _ in range(2))
    decryptor, seed, part = _decryptor_part()
    devices = [f"he-{i}" for i in range(4)]
    rid = a.start_he(devices, 5, seed=seed, decryptor_part=part, value_bits=16, max_summands=8, actor="analyst")
    with engine.connect() as conn:
        spec = bytes(conn.execute(select(rounds.c.spec).where(rounds.c.round_id == rid)).scalar_one())
    assert b"sealed" in spec
    replayed = a._build(a.store.get(rid))  # the hub's share as the hub uses it
    share = replayed.spec.hub_share.to_bytes()  # type: ignore[union-attr]
    assert share[32:96] not in spec  # sealed under the key store, not in clear in the database
    values = {d: [i + 1, 2, 3, 4, 5 * i] for i, d in enumerate(devices)}
    for i, d in enumerate(devices):
        assert HeClient(_send([a, b] if i % 2 else [b, a], d), rid, values[d]).step() in ("submit", "done")
    out = SecureAggregationService(MemoryAuditSink(), clock, SqlRoundStore(engine), keystore).status(
        rid, actor="analyst")
    assert out["phase"] == "done" and out["submitted"] == 4
    again = b.status(rid, actor="analyst")  # another process's replay computes the same partial
    assert again["hub_partial"] == out["hub_partial"]
    assert open_result(out, RlweParams(16, 8), decryptor) == [sum(col) for col in zip(*values.values(), strict=True)]
    engine.dispose()


def test_a_device_that_restarts_mid_upload_is_counted_once_with_one_encryption() -> None:
    """Parts of an earlier, abandoned encryption never mix with a new one's (that would corrupt the sum)."""
    clock = FixedClock(T0)
    service = SecureAggregationService(MemoryAuditSink(), clock)
    decryptor, seed, part = _decryptor_part()
    devices = [f"he-{i}" for i in range(3)]
    rid = service.start_he(devices, 5, seed=seed, decryptor_part=part, value_bits=16, actor="analyst")
    values = {d: [7 * i, 1, 2, 3, 4] for i, d in enumerate(devices)}
    sent: list[dict[str, Any]] = []
    send0 = _send([service], "he-0")

    def crash_after_four(body: dict[str, Any]) -> dict[str, Any]:
        if body["step"] == "he_submit":
            if len(sent) == 4:
                raise ConnectionError("the device lost power")
            sent.append(body)
        return send0(body)

    with pytest.raises(ConnectionError):
        HeClient(crash_after_four, rid, values["he-0"]).step()
    assert HeClient(send0, rid, values["he-0"]).step() == "submit"  # restarted: encrypts afresh, sends all
    for d in devices[1:]:
        HeClient(_send([service], d), rid, values[d]).step()
    out = service.status(rid, actor="analyst")
    assert out["phase"] == "done" and out["submitted"] == 3
    assert open_result(out, RlweParams(16, 3), decryptor) == [sum(col) for col in zip(*values.values(), strict=True)]


def test_an_he_round_with_too_few_uploads_is_never_decrypted() -> None:
    """A sum of one device is that device's value: below the quorum the hub applies no key share."""
    clock = FixedClock(T0)
    service = SecureAggregationService(MemoryAuditSink(), clock)
    _decryptor, seed, part = _decryptor_part()
    devices = [f"he-{i}" for i in range(3)]
    rid = service.start_he(devices, 4, seed=seed, decryptor_part=part, value_bits=8, timeout_s=10, actor="analyst")
    HeClient(_send([service], "he-0"), rid, [1, 2, 3, 4]).step()
    clock.advance(11)
    out = service.status(rid, actor="analyst")
    assert out["phase"] == "failed" and out["reason"] == "too_few_submissions" and "hub_partial" not in out
    with pytest.raises(MalformedError, match="min_devices"):
        service.start_he(devices, 4, seed=seed, decryptor_part=part, value_bits=8, min_devices=1, actor="analyst")
    rid = service.start_he(devices, 4, seed=seed, decryptor_part=part, value_bits=8, min_devices=2, timeout_s=10,
                           actor="analyst")
    for d in devices[:2]:
        HeClient(_send([service], d), rid, [1, 2, 3, 4]).step()
    clock.advance(11)
    assert service.status(rid, actor="analyst")["phase"] == "done"  # two of three: the operator's quorum


def test_an_he_round_sizes_its_plaintext_for_its_invited_devices_unless_told_otherwise() -> None:
    import base64

    import cbor2

    _decryptor, seed, part = _decryptor_part()
    service = SecureAggregationService(MemoryAuditSink(), FixedClock(T0))
    devices = [f"he-{i}" for i in range(5)]
    rid = service.start_he(devices, 5, seed=seed, decryptor_part=part, value_bits=16, actor="analyst")
    reply = _send([service], "he-0")({"round": rid, "step": "he_poll", "message": b""})
    poll = cbor2.loads(base64.urlsafe_b64decode(reply["message"]))
    assert poll["max_summands"] == 5 and poll["value_bits"] == 16 and poll["missing"] == list(range(10))
    with pytest.raises(MalformedError, match="round refused"):
        service.start_he(devices, 5, seed=seed, decryptor_part=part[:-4], value_bits=16, actor="analyst")


def test_a_round_whose_log_no_longer_replays_fails_instead_of_staying_running() -> None:
    """A round logged by a former message format (ADR 0416: its ``shares`` messages no longer parse) cannot
    go on: it is failed with a reason, the failure logged once, and the store stops counting it as running
    (it would otherwise hold one of the ``MAX_ROUNDS`` places for ever)."""
    clock = FixedClock(T0)
    store = MemoryRoundStore()
    service = SecureAggregationService(MemoryAuditSink(), clock, store=store)
    devices = [f"dev-{i}" for i in range(3)]
    rid = service.start(devices, 4, phase_timeout_s=10, actor="analyst")
    clients = {d: RoundClient(_send([service], d), rid, np.arange(4, dtype=np.uint32)) for d in devices}
    for c in clients.values():
        c.step()  # advertise: the round moves to share
    with store.step(rid) as tx:  # a shares message of the former format (a CBOR array per box)
        assert tx is not None
        tx.append("shares", "dev-0", b"\xa1\x65boxes\x80", T0, "share")
    fresh = SecureAggregationService(MemoryAuditSink(), clock, store=store)  # another process: replays the log
    out = fresh.status(rid, actor="analyst")
    assert out["phase"] == "failed" and out["reason"] == "round_log_unreadable"
    assert store.phases() == {"failed": 1}
    assert fresh.status(rid, actor="analyst")["phase"] == "failed"  # replayed again: the same, logged once
    with store.step(rid) as tx:
        assert tx is not None and [e.kind for e in tx.events_after(0)][-2:] == ["shares", "tick"]
    assert clients["dev-1"].step() == "failed"  # the first process, from its cache, sees the same
    assert store.phases() == {"failed": 1}
