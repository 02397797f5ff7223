"""Sealed channel: nonces, sealing, replay window, sequence persistence, acks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_huge_sequence_jump_does_not_grow_replay_window() -> None:
    """One authenticated envelope with a huge sequence jump costs microseconds, not gigabytes (issue 10)."""
    w = ReplayWindow(1024)
    w.accept(7)
    started = time.perf_counter()
    for seq in (2**33, 2**36, 2**63, 2**64 - 2):
        w.accept(seq)
        assert len(w.bitmap()) == 128
        assert int.from_bytes(w.bitmap(), "big") == 1  # only the new top is inside the window
    assert time.perf_counter() - started < 0.05
    with pytest.raises(ReplayError, match="already"):
        w.accept(2**64 - 2)
    with pytest.raises(ReplayError, match="older"):
        w.accept(2**63)
    w.accept(2**64 - 3)
    w.accept(2**64 - 1)
    restored = ReplayWindow(1024, w.top, w.bitmap())
    for seq in (2**64 - 1, 2**64 - 2, 2**64 - 3):
        with pytest.raises(ReplayError):
            restored.accept(seq)


def test_jump_of_exactly_one_window_keeps_semantics() -> None:
    w = ReplayWindow(64)
    w.accept(10)
    w.accept(74)  # shift == size: 10 falls out of the window
    with pytest.raises(ReplayError, match="older"):
        w.accept(10)
    w.accept(11)  # offset 63, inside the window and unseen
    with pytest.raises(ReplayError, match="already"):
        w.accept(11)


def test_restored_bitmap_wider_than_window_is_masked() -> None:
    w = ReplayWindow(8, 100, b"\xff\xff")
    assert w.bitmap() == b"\xff"


_SEQS = st.one_of(
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.sampled_from([2**33, 2**36, 2**63, 2**64 - 1]),
)


@settings(max_examples=300, deadline=None)
@given(size=st.sampled_from([1, 8, 64, 1024]), ops=st.lists(st.tuples(_SEQS, st.booleans()), max_size=60))
def test_replay_window_matches_set_model(size: int, ops: list[tuple[int, bool]]) -> None:
    """The bitmap window decides exactly as a set of every accepted sequence would.

    Model: a sequence is accepted iff it was never accepted before and lies
    within ``size`` of the highest accepted one. The flag restores the window
    from its persisted form before the step, as a hub restart would.
    """
    w = ReplayWindow(size)
    seen: set[int] = set()
    for seq, restart in ops:
        if restart:
            w = ReplayWindow(size, w.top, w.bitmap())
        top = max(seen, default=-1)
        expect_ok = seq not in seen and top - seq < size
        try:
            w.accept(seq)
            accepted = True
        except ReplayError:
            accepted = False
        assert accepted == expect_ok, (seq, top)
        if accepted:
            seen.add(seq)
        assert w.top == max(seen, default=-1)
        assert len(w.bitmap()) == (size + 7) // 8


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
