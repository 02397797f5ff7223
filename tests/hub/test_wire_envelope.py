"""Wire format v1: round trip and strict decoding of untrusted bytes."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotguard.errors import MalformedError
from iotguard.wire import Reading, decode_envelope, decode_reading, encode_envelope, encode_header, encode_reading


def test_round_trip_matches_generic_cbor() -> None:
    env = encode_envelope(4, "dev-1", 7, 300, b"c" * 20)
    # Any CBOR library reads it as the documented 6-item array.
    assert cbor2.loads(env) == [1, 4, "dev-1", 7, 300, b"c" * 20]
    d = decode_envelope(env)
    assert (d.suite_id, d.device_id, d.epoch, d.seq, d.ciphertext) == (4, "dev-1", 7, 300, b"c" * 20)
    assert d.header == encode_header(4, "dev-1", 7, 300)


def test_documented_example_bytes() -> None:
    # The example in docs/wire.md, byte by byte.
    env = encode_envelope(1, "dev-1", 1, 300, bytes(16))
    assert env.hex() == "860101656465762d310119012c50" + "00" * 16


@pytest.mark.parametrize("seq", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
def test_integer_boundaries(seq: int) -> None:
    assert decode_envelope(encode_envelope(1, "d", 0, seq, bytes(16))).seq == seq


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "empty"),
        (bytes.fromhex("85"), "5-item array"),
        (bytes.fromhex("9f"), "indefinite array"),
        (bytes.fromhex("8602"), "version 2"),
        # seq 5 encoded in two bytes (0x18 0x05) instead of one: not deterministic
        (bytes.fromhex("860101616401180550") + bytes(16), "non-shortest integer"),
        (encode_envelope(1, "d", 1, 1, bytes(16)) + b"\x00", "trailing byte"),
        (encode_envelope(1, "d", 1, 1, bytes(15)), "ciphertext shorter than a tag"),
        (bytes.fromhex("86010161200101") + b"\x50" + bytes(16), "device id with a space"),
        (bytes.fromhex("8601016164010158ff") + bytes(10), "truncated ciphertext"),
    ],
)
def test_strict_decoder_rejects(data: bytes, why: str) -> None:
    with pytest.raises(MalformedError):
        decode_envelope(data)


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1])
def test_sequence_beyond_signed_64_bits_is_malformed(seq: int) -> None:
    """The hub stores seq in a signed 64-bit column; a larger one is refused before decryption."""
    data = bytes.fromhex("8601016164") + b"\x01\x1b" + seq.to_bytes(8, "big") + b"\x50" + bytes(16)
    with pytest.raises(MalformedError, match="sequence out of range"):
        decode_envelope(data)
    with pytest.raises(MalformedError):
        encode_envelope(1, "d", 1, seq, bytes(16))


def test_size_limit_is_checked_before_parsing() -> None:
    big = encode_envelope(1, "d", 1, 1, bytes(20000))
    with pytest.raises(MalformedError, match="limit"):
        decode_envelope(big, max_size=16384)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decoder_only_raises_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedError):
        decode_envelope(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_reading_decoder_only_raises_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedError):
        decode_reading(data)


def test_reading_round_trip_and_limits() -> None:
    r = Reading(1_700_000_000_000, {"temperature": 21.5, "motion": True, "label": "kitchen"}, "billing")
    assert decode_reading(encode_reading(r)) == r
    with pytest.raises(MalformedError):
        decode_reading(cbor2.dumps({"ts": 1, "f": {f"k{i}": i for i in range(100)}}), max_fields=64)
    with pytest.raises(MalformedError):
        decode_reading(cbor2.dumps({"ts": 1, "f": {"x": float("nan")}}))
    with pytest.raises(MalformedError):
        decode_reading(cbor2.dumps({"ts": 1, "f": {"x": [1, 2]}}))
    with pytest.raises(MalformedError):
        decode_reading(cbor2.dumps({"ts": -1, "f": {}}))
