"""Sealed channel: nonces, sealing, replay window, sequence persistence, acks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from iotguard.channel import (
    ReplayWindow,
    SequenceAllocator,
    UplinkSealer,
    decode_ack,
    encode_ack,
    make_nonce,
    telemetry_topic,
)
from iotguard.crypto import get_suite, suite_names
from iotguard.errors import IntegrityError, ReplayError
from iotguard.keys import SoftwareKeyStore
from iotguard.wire import associated_data, decode_envelope


def _sealer(tmp_path: Path, suite: str = "chacha20-poly1305") -> tuple[UplinkSealer, bytes]:
    s = get_suite(suite)
    key = os.urandom(s.key_size)
    ks = SoftwareKeyStore(tmp_path / "ks")
    return UplinkSealer(s, "dev-1", 1, key, SequenceAllocator(ks, "seq/1")), key


def _open(sealer: UplinkSealer, key: bytes, envelope: bytes, topic: str | None = None) -> bytes:
    env = decode_envelope(envelope)
    s = get_suite(env.suite_id)
    return s.open(key, make_nonce(env.epoch, env.seq, s.nonce_size),
                  associated_data(env.header, topic or telemetry_topic("default", env.device_id)), env.ciphertext)


def test_nonces_are_unique_per_epoch_and_sequence() -> None:
    seen = {make_nonce(e, s, 12) for e in range(3) for s in range(1000)}
    assert len(seen) == 3000
    assert make_nonce(1, 2, 16)[:4] == b"\x00" * 4


@pytest.mark.parametrize("suite", suite_names())
def test_seal_and_open_every_suite(tmp_path: Path, suite: str) -> None:
    sealer, key = _sealer(tmp_path, suite)
    _seq, env = sealer.seal(b"hello")
    assert _open(sealer, key, env) == b"hello"


def test_lateral_topic_is_bound_into_the_tag(tmp_path: Path) -> None:
    """An envelope moved to another device's topic no longer authenticates."""
    sealer, key = _sealer(tmp_path)
    _seq, env = sealer.seal(b"x")
    with pytest.raises(IntegrityError):
        _open(sealer, key, env, topic=telemetry_topic("default", "dev-2"))


def test_header_fields_are_bound_into_the_tag(tmp_path: Path) -> None:
    """Rewriting the sequence number in the header breaks the tag."""
    from iotguard.wire import encode_envelope

    sealer, key = _sealer(tmp_path)
    _seq, env = sealer.seal(b"x")
    d = decode_envelope(env)
    moved = encode_envelope(d.suite_id, d.device_id, d.epoch, d.seq + 1, d.ciphertext)
    with pytest.raises(IntegrityError):
        _open(sealer, key, moved)


def test_sequence_never_repeats_across_a_crash(tmp_path: Path) -> None:
    """A rebooted device resumes past every sequence it may have used (no nonce reuse)."""
    ks = SoftwareKeyStore(tmp_path / "ks")
    a = SequenceAllocator(ks, "seq/1", reserve=16)
    used = [a.next() for _ in range(20)]
    # crash: a new allocator over the reopened key store
    b = SequenceAllocator(SoftwareKeyStore(tmp_path / "ks"), "seq/1", reserve=16)
    assert b.next() > max(used)


def test_replay_window_accepts_out_of_order_and_rejects_duplicates() -> None:
    w = ReplayWindow(64)
    for s in (5, 3, 4, 10, 6):
        w.accept(s)
    for s in (5, 3, 10):
        with pytest.raises(ReplayError, match="already"):
            w.accept(s)
    w.accept(100)
    with pytest.raises(ReplayError, match="older"):
        w.accept(10)
    w.accept(99)
    restored = ReplayWindow(64, w.top, w.bitmap())
    with pytest.raises(ReplayError):
        restored.accept(99)
    restored.accept(98)


def test_replay_window_first_sequence_zero() -> None:
    w = ReplayWindow(64)
    w.accept(0)
    with pytest.raises(ReplayError):
        w.accept(0)


def test_ack_round_trip_and_forgery() -> None:
    key = os.urandom(32)
    data = encode_ack("dev-1", 3, [1, 2, 3, 7, 9, 10], key)
    ack = decode_ack("dev-1", data, key)
    assert list(ack.sequences()) == [1, 2, 3, 7, 9, 10]
    assert ack.epoch == 3
    forged = data[:-1] + bytes((data[-1] ^ 1,))
    with pytest.raises(IntegrityError):
        decode_ack("dev-1", forged, key)
    with pytest.raises(IntegrityError):
        decode_ack("dev-2", data, key)  # an ack for one device is useless for another
