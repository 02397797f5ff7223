"""Hub ingest: every rejection has its reason code, nothing is stored twice,
and a storage failure acknowledges nothing."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotguard.channel import decode_ack, telemetry_topic
from iotguard.errors import PolicyDenied, StorageError
from iotguard.hub.ingest import Incoming
from iotguard.wire import Reading, decode_envelope, encode_envelope, encode_reading
from tests.hub.conftest import HubParts


def _reading(i: int = 0) -> Reading:
    return Reading(1_700_000_000_000 + i, {"temperature": 20.0 + i}, "heating_control")


def _seal(agent, i: int = 0) -> Incoming:  # type: ignore[no-untyped-def]
    _seq, env = agent.sealer.seal(encode_reading(_reading(i)))
    return Incoming(agent.sealer.topic, env)


def test_valid_batch_is_stored_once_and_acknowledged(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    batch = [_seal(a, i) for i in range(10)]
    out = hub.processor.process(batch)
    assert out.stored == 10 and not out.rejected
    assert hub.store.reading_count("dev-1") == 10
    ack = decode_ack("dev-1", out.acks[("iotguard/default/dev-1/ack", 1)], a._keys.downlink)  # type: ignore[union-attr]
    assert sorted(ack.sequences()) == sorted(decode_envelope(m.payload).seq for m in batch)


def test_replay_is_rejected(hub: HubParts) -> None:
    """Check for a replay attack: a captured envelope sent again is not stored again."""
    a = hub.agent("dev-1")
    m = _seal(a)
    assert hub.processor.process([m]).stored == 1
    out = hub.processor.process([m])
    assert out.stored == 0 and out.rejected["replay"] == 1
    assert ("iotguard/default/dev-1/ack", 1) in out.acks  # re-acknowledged so an honest device stops resending
    assert hub.store.reading_count() == 1


def test_replay_is_rejected_after_hub_restart(hub: HubParts) -> None:
    """The replay window is durable: a new hub process still rejects the replay."""
    from iotguard.hub.ingest import IngestProcessor

    a = hub.agent("dev-1")
    m = _seal(a)
    hub.processor.process([m])
    fresh = IngestProcessor(hub.store, hub.registry, hub.cfg)
    assert fresh.process([m]).rejected["replay"] == 1


def test_duplicate_inside_one_batch(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    m = _seal(a)
    out = hub.processor.process([m, m, m])
    assert out.stored == 1 and out.rejected["replay"] == 2


def test_old_sequence_outside_window_is_rejected(tmp_path) -> None:
    from tests.hub.conftest import make_hub

    parts = make_hub(tmp_path, replay_window=64)
    a = parts.agent("dev-1")
    old = _seal(a)
    for _ in range(70):
        a.sealer._seq.next()
    parts.processor.process([_seal(a)])
    out = parts.processor.process([old])
    assert out.rejected["replay"] == 1
    # Never stored, so never acknowledged: an acknowledgement would make the device drop it.
    assert not out.acks


@pytest.mark.parametrize("where", ["ciphertext", "tag"])
def test_forged_tag_is_rejected(hub: HubParts, where: str) -> None:
    """Check for forgery: one flipped bit anywhere in the ciphertext fails authentication."""
    a = hub.agent("dev-1")
    m = _seal(a)
    d = decode_envelope(m.payload)
    pos = 0 if where == "ciphertext" else len(d.ciphertext) - 1
    ct = bytearray(d.ciphertext)
    ct[pos] ^= 0x80
    bad = Incoming(m.topic, encode_envelope(d.suite_id, d.device_id, d.epoch, d.seq, bytes(ct)))
    out = hub.processor.process([bad])
    assert out.stored == 0 and out.rejected["forged"] == 1
    # The genuine message with the same sequence is still accepted afterwards:
    # a forgery does not burn the sequence number.
    assert hub.processor.process([m]).stored == 1


def test_forged_envelopes_do_not_fail_their_neighbours(hub: HubParts) -> None:
    a, b = hub.agent("dev-1"), hub.agent("dev-2", suites=["aes-128-gcm"])
    good = [_seal(a, i) for i in range(5)] + [_seal(b, i) for i in range(5)]
    forged = Incoming(good[0].topic, good[0].payload[:-1] + bytes((good[0].payload[-1] ^ 1,)))
    out = hub.processor.process([forged, *good[1:], good[0]])
    assert out.stored == 10 and out.rejected["forged"] == 1


def test_lateral_publish_to_another_devices_topic(hub: HubParts) -> None:
    """A device publishing its envelope on another device's topic is rejected."""
    a = hub.agent("dev-1")
    hub.agent("dev-2")
    m = _seal(a)
    out = hub.processor.process([Incoming(telemetry_topic("default", "dev-2"), m.payload)])
    assert out.rejected["topic_mismatch"] == 1 and out.stored == 0


def test_unknown_device_and_unknown_epoch(hub: HubParts) -> None:
    env = encode_envelope(1, "ghost", 1, 1, os.urandom(32))
    assert hub.processor.process([Incoming(telemetry_topic("default", "ghost"), env)]).rejected["unknown_device"] == 1
    a = hub.agent("dev-1")
    env = encode_envelope(1, "dev-1", 9, 1, os.urandom(32))
    assert hub.processor.process([Incoming(a.sealer.topic, env)]).rejected["unknown_device"] == 1


def test_revoked_device_still_publishing_is_rejected(hub: HubParts) -> None:
    """Revocation takes effect at ingest (immediately on this hub, within the cache TTL on others)."""
    a = hub.agent("dev-1")
    hub.registry.revoke("dev-1")
    out = hub.processor.process([_seal(a)])
    assert out.rejected["revoked"] == 1 and out.stored == 0


def test_revocation_by_another_hub_process_takes_effect_within_the_cache_ttl(tmp_path) -> None:
    from iotguard.clock import FixedClock
    from iotguard.hub.ingest import IngestProcessor
    from iotguard.hub.services import DeviceLifecycle, open_hub_keys
    from tests.hub.conftest import make_hub

    parts = make_hub(tmp_path, device_cache_ttl_s=1.0)
    a = parts.agent("dev-1")
    clock = FixedClock()
    reg = DeviceLifecycle(parts.store, open_hub_keys(parts.cfg), parts.cfg, clock, outbox=parts.services.outbox)
    proc = IngestProcessor(parts.store, reg, parts.cfg, clock=clock)
    assert proc.process([_seal(a, 1)]).stored == 1
    parts.store.revoke_device("dev-1", now=clock.now())  # another process revokes
    clock.advance(1.5)
    assert proc.process([_seal(a, 2)]).rejected["revoked"] == 1


def test_suite_id_mismatch_is_forged(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    d = decode_envelope(_seal(a).payload)
    swapped = encode_envelope(2, d.device_id, d.epoch, d.seq, d.ciphertext)
    assert hub.processor.process([Incoming(a.sealer.topic, swapped)]).rejected["forged"] == 1


def test_authentic_but_malformed_reading(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    _seq, env = a.sealer.seal(b"\xff\x00garbage")
    out = hub.processor.process([Incoming(a.sealer.topic, env)])
    assert out.rejected["malformed"] == 1 and out.stored == 0
    assert ("iotguard/default/dev-1/ack", 1) in out.acks  # processed: the device must not resend it forever


def test_policy_denial_is_counted(hub: HubParts) -> None:
    def deny(record, topic, reading):  # type: ignore[no-untyped-def]
        raise PolicyDenied("quarantined")

    hub.processor.authorizer = deny
    a = hub.agent("dev-1")
    out = hub.processor.process([_seal(a)])
    assert out.rejected["policy_denied"] == 1 and out.stored == 0


def test_storage_failure_acknowledges_nothing_and_retry_stores_once(hub: HubParts, monkeypatch) -> None:
    a = hub.agent("dev-1")
    batch = [_seal(a, i) for i in range(5)]
    real = hub.store.store_batch

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise StorageError("disk full")

    monkeypatch.setattr(hub.store, "store_batch", broken)
    with pytest.raises(StorageError):
        hub.processor.process(batch)
    monkeypatch.setattr(hub.store, "store_batch", real)
    out = hub.processor.process(batch)  # the same batch, redelivered
    assert out.stored == 5 and not out.rejected
    assert hub.store.reading_count() == 5


def test_rejections_are_persisted_per_reason(hub: HubParts) -> None:
    hub.processor.process([Incoming("iotguard/default/x/telemetry", b"\x00")])
    assert hub.store.rejection_totals() == {"malformed": 1}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=300), topic=st.text(max_size=40))
def test_fuzz_ingest_never_crashes(hub: HubParts, payload: bytes, topic: str) -> None:
    """Bad input never crashes the worker: any bytes on any topic are processed or rejected."""
    out = hub.processor.process([Incoming(topic, payload)])
    assert out.stored == 0
    assert sum(out.rejected.values()) == 1


def test_two_hubs_never_store_a_reading_twice(hub: HubParts) -> None:
    """Two hub processes share one database: a reading the other hub stored is a replay here."""
    from iotguard.hub.ingest import IngestProcessor

    a = hub.agent("dev-1")
    other = IngestProcessor(hub.store, hub.registry, hub.cfg, authorizer=hub.services.posture.authorize_reading)
    first, m = _seal(a, 0), _seal(a, 1)
    assert other.process([first]).stored == 1  # hub B now holds a window without m
    assert hub.processor.process([m]).stored == 1  # hub A stores m
    out = other.process([m])  # B's window is stale; the database decides
    assert out.stored == 0 and out.rejected["replay"] == 1
    assert hub.store.reading_count() == 2


def test_authenticated_sequence_beyond_the_database_range_does_not_stall_ingest(hub: HubParts) -> None:
    """One authenticated envelope with seq 2^63 used to fail the whole batch's storage, retried forever."""
    from iotguard.channel import make_nonce
    from iotguard.crypto import get_suite
    from iotguard.wire import associated_data

    a = hub.agent("dev-1")
    sealer = a.sealer
    suite = get_suite("chacha20-poly1305")
    seq = 2**63
    header = (bytes.fromhex("860101") + bytes([0x60 + 5]) + b"dev-1" + bytes([sealer.epoch])
              + b"\x1b" + seq.to_bytes(8, "big"))
    ct = suite.seal(a._keys.uplink, make_nonce(sealer.epoch, seq, suite.nonce_size),  # type: ignore[union-attr]
                    associated_data(header, sealer.topic), encode_reading(_reading(1)))
    huge = Incoming(sealer.topic, header + bytes([0x58, len(ct)]) + ct)
    out = hub.processor.process([_seal(a, 0), huge])
    assert out.stored == 1 and out.rejected == {"malformed": 1}
    assert hub.store.reading_count("dev-1") == 1


def test_expired_device_records_are_refreshed_in_one_query_per_batch(tmp_path, monkeypatch) -> None:
    """As cache entries expire, a batch re-reads its devices together, not one round trip each
    (found by the scale-out benchmark: about a hundred queries a second per hub)."""
    from iotguard.clock import FixedClock
    from iotguard.hub.ingest import IngestProcessor
    from iotguard.hub.services import DeviceLifecycle, open_hub_keys
    from tests.hub.conftest import make_hub

    parts = make_hub(tmp_path, device_cache_ttl_s=1.0)
    agents = [parts.agent(f"dev-{i}") for i in range(5)]
    clock = FixedClock()
    reg = DeviceLifecycle(parts.store, open_hub_keys(parts.cfg), parts.cfg, clock, outbox=parts.services.outbox)
    proc = IngestProcessor(parts.store, reg, parts.cfg, clock=clock)
    assert proc.process([_seal(a, 1) for a in agents]).stored == 5
    clock.advance(1.5)
    single: list[str] = []
    batched: list[list[str]] = []
    real_one, real_many = parts.store.get_device, parts.store.get_devices
    monkeypatch.setattr(parts.store, "get_device", lambda d: single.append(d) or real_one(d))
    monkeypatch.setattr(parts.store, "get_devices", lambda ds: batched.append(list(ds)) or real_many(ds))
    assert proc.process([_seal(a, 2) for a in agents]).stored == 5
    assert single == [] and batched == [[f"dev-{i}" for i in range(5)]]
    parts.store.revoke_device("dev-3", now=clock.now())  # still seen: the batch read is the fresh one
    clock.advance(1.5)
    out = proc.process([_seal(a, 3) for a in agents])
    assert out.stored == 4 and out.rejected["revoked"] == 1


def test_compiled_ascon_is_selected_by_configuration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``hub.ascon_compiled`` makes ingest open Ascon batches with the compiled form (ADR 0101), same results."""
    from tests.hub.conftest import make_hub

    parts = make_hub(tmp_path, ascon_compiled=True)
    a = parts.agent("dev-1", suites=["ascon-aead128"])
    batch = [_seal(a, i) for i in range(5)]
    forged = decode_envelope(batch[4].payload)
    bad = bytearray(forged.ciphertext)
    bad[0] ^= 1
    batch[4] = Incoming(batch[4].topic, batch[4].payload.replace(bytes(forged.ciphertext), bytes(bad)))
    out = parts.processor.process(batch)
    assert out.stored == 4 and out.rejected["forged"] == 1
    session = parts.processor._session("dev-1", 1)
    assert not isinstance(session, str) and getattr(session.suite, "compiled", False) is True
    parts.store.engine.dispose()


def test_device_flooding_over_its_quota_is_refused_by_reason_and_not_acknowledged(tmp_path) -> None:
    """Check for a one-device flood at 100x its quota: its excess is refused before the AEAD
    open, counted as ``device_over_quota`` (metrics, rejection table), never acknowledged (the
    device keeps it and resends), and a neighbour in the same segment is still admitted."""
    from tests.hub.conftest import make_hub

    parts = make_hub(tmp_path, quota_device_rate=1.0, quota_device_burst=5.0)
    flooder, neighbour = parts.agent("dev-flood"), parts.agent("dev-calm")
    out = parts.processor.process([_seal(flooder, i) for i in range(500)] + [_seal(neighbour, 0)])
    assert out.stored == 6
    assert out.rejected == {"device_over_quota": 495}
    assert parts.store.reading_count("dev-calm") == 1 and parts.store.reading_count("dev-flood") == 5
    acked = decode_ack("dev-flood", out.acks[("iotguard/default/dev-flood/ack", 1)],
                       flooder._keys.downlink)  # type: ignore[union-attr]
    assert len(list(acked.sequences())) == 5
    assert parts.store.rejection_totals()["device_over_quota"] == 495
    assert parts.processor.stats.snapshot()["rejected"]["device_over_quota"] == 495


def test_quota_refusals_are_audited_aggregated_not_per_batch(tmp_path) -> None:
    """A flood refused batch after batch costs one audit entry per device and reason per
    QUOTA_AUDIT_INTERVAL_S, not an audit append per batch (which would be the flood's lever)."""
    from iotguard.audit import MemoryAuditSink
    from iotguard.hub.ingest import QUOTA_AUDIT_INTERVAL_S, IngestProcessor, admission_from_config
    from tests.hub.conftest import make_hub

    parts = make_hub(tmp_path, quota_device_rate=1.0, quota_device_burst=1.0)
    flooder = parts.agent("dev-flood")
    sink, t = MemoryAuditSink(), [0.0]
    proc = IngestProcessor(parts.store, parts.registry, parts.cfg, audit=sink, monotonic=lambda: t[0],
                           admission=admission_from_config(parts.cfg))
    for _ in range(10):  # ten batches within one interval: refused, counted, not yet audited
        proc.process([_seal(flooder, i) for i in range(20)])
    assert sink.events == []
    assert parts.store.rejection_totals()["device_over_quota"] == 10 * 20 - 1
    t[0] += QUOTA_AUDIT_INTERVAL_S
    assert proc.process([_seal(flooder, 0)]).stored == 1  # refilled; the pending refusals go out now
    assert [(e.subject, e.details["reason"], e.details["count"]) for e in sink.events] == [
        ("dev-flood", "device_over_quota", 10 * 20 - 1)]
