"""Compression: top-k with error feedback and 8-bit quantisation; the hub decodes update bytes strictly."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from iotguard.errors import ConfigError, MalformedError, PolicyDenied
from iotguard.learn.compress import (
    SCHEMES,
    Compression,
    UpdateEncoder,
    check_compression,
    decode_update,
    encoded_size,
    negotiate,
    parse_schedule,
)

DIMS = 2000


def test_dense_float32_roundtrip() -> None:
    v = np.random.default_rng(0).normal(0, 1, DIMS)
    out = decode_update(UpdateEncoder(DIMS).encode(v, Compression("none")), DIMS)
    assert np.allclose(out, v, atol=1e-6)


def test_q8_is_unbiased_and_within_one_step() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(0, 1, DIMS)
    enc = UpdateEncoder(DIMS, seed=1)
    data = enc.encode(v, Compression("q8"))
    out = decode_update(data, DIMS)
    step = np.max(np.abs(v)) / 127
    assert np.max(np.abs(out - v)) <= step * 1.0001
    assert len(data) < DIMS * 4 / 3.9


def test_topk_q8_is_over_fifty_times_smaller_than_float32() -> None:
    v = np.random.default_rng(0).normal(0, 1, DIMS)
    dense = UpdateEncoder(DIMS).encode(v, Compression("none"))
    sparse = UpdateEncoder(DIMS).encode(v, Compression("topk+q8", topk_fraction=0.004))
    assert len(dense) / len(sparse) >= 50


def test_error_feedback_delivers_what_topk_left_out() -> None:
    # Without feedback, coordinates below the top-k cut would never be sent; with it, the sum of what the
    # hub decodes over many rounds tracks the sum of the updates (the residual stays bounded).
    rng = np.random.default_rng(2)
    enc = UpdateEncoder(DIMS, seed=3)
    sent_total, true_total = np.zeros(DIMS), np.zeros(DIMS)
    for _ in range(300):
        v = rng.normal(0.01, 0.1, DIMS)  # small common drift under noise
        true_total += v
        sent_total += decode_update(enc.encode(v, Compression("topk+q8", topk_fraction=0.05)), DIMS)
    residual = true_total - sent_total
    assert np.linalg.norm(residual) < 0.2 * np.linalg.norm(true_total)
    assert np.count_nonzero(sent_total) > 0.95 * DIMS


@pytest.mark.parametrize("name,mutate,code", [
    ("truncated", lambda b: b[:-1], "update_malformed"),
    ("empty", lambda b: b"", "update_malformed"),
    ("bad_magic", lambda b: b"XXXX" + b[4:], "update_malformed"),
    ("bad_scheme", lambda b: b[:4] + bytes([9]) + b[5:], "update_malformed"),
    ("wrong_dims", lambda b: b[:5] + struct.pack("<I", DIMS + 1) + b[9:], "update_dims"),
    ("count_zero", lambda b: b[:9] + struct.pack("<I", 0) + b[13:], "update_malformed"),
    ("nan_scale", lambda b: b[:13] + struct.pack("<f", float("nan")) + b[17:], "update_malformed"),
    ("unsorted_indices", lambda b: b[:17] + b[21:25] + b[17:21] + b[25:], "update_malformed"),
    ("index_out_of_range", lambda b: b[:17 + 4 * 19] + struct.pack("<I", DIMS) + b[17 + 4 * 20:], "update_malformed"),
    ("int8_min", lambda b: b[:-1] + bytes([0x80]), "update_malformed"),
])
def test_forged_update_bytes_rejected_with_reason(name: str, mutate: object, code: str) -> None:
    v = np.random.default_rng(0).normal(0, 1, DIMS)
    good = UpdateEncoder(DIMS).encode(v, Compression("topk+q8", topk_fraction=0.01))
    decode_update(good, DIMS)
    with pytest.raises(MalformedError) as e:
        decode_update(mutate(good), DIMS)  # type: ignore[operator]
    assert e.value.code == code


def test_non_finite_float_values_rejected() -> None:
    v = np.zeros(DIMS)
    data = bytearray(UpdateEncoder(DIMS).encode(v, Compression("none")))
    data[-4:] = struct.pack("<f", float("inf"))
    with pytest.raises(MalformedError):
        decode_update(bytes(data), DIMS)


def test_unknown_scheme_refused() -> None:
    with pytest.raises(ConfigError):
        Compression("zip")


def test_a_schedule_entry_offers_alternatives_best_first_and_refuses_a_repeated_scheme() -> None:
    schedule = parse_schedule("topk+q8|q8|none,q8", 0.05)
    assert schedule == ((Compression("topk+q8", 0.05), Compression("q8", 0.05), Compression("none", 0.05)),
                        (Compression("q8", 0.05),))
    for bad in ("q8|q8", "topk+q8||none", "zip", ""):
        with pytest.raises(ConfigError):
            parse_schedule(bad, 0.05)


def test_encoded_size_is_the_exact_wire_size_of_each_scheme() -> None:
    v = np.random.default_rng(3).normal(0, 1, DIMS)
    for scheme in SCHEMES:
        c = Compression(scheme, 0.02)
        assert len(UpdateEncoder(DIMS).encode(v, c)) == encoded_size(c, DIMS)


def test_negotiation_picks_the_first_offered_scheme_the_device_accepts_and_can_send() -> None:
    offer = parse_schedule("topk+q8|q8|none", 0.02)[0]
    assert negotiate(offer, DIMS).scheme == "topk+q8"  # a device that says nothing takes the hub's first
    assert negotiate(offer, DIMS, {"q8", "none"}).scheme == "q8"  # no top-k on this device
    assert negotiate(offer, DIMS, {"none"}).scheme == "none"
    # A narrow link: 8-bit dense does not fit in DIMS bytes (17-byte header), top-k 8-bit does.
    assert negotiate(offer, DIMS, {"q8", "topk+q8"}, max_update_bytes=DIMS).scheme == "topk+q8"
    assert negotiate(parse_schedule("none|q8", 0.02)[0], DIMS, None, max_update_bytes=DIMS + 17).scheme == "q8"
    for accepts, limit in (({"topk"}, 0), ({"none"}, 4 * DIMS), (None, 16)):
        with pytest.raises(PolicyDenied) as exc:
            negotiate(offer, DIMS, accepts, limit)
        assert exc.value.code == "compression_unsupported"


def test_an_update_in_any_offered_scheme_is_accepted_and_one_outside_the_offer_is_refused() -> None:
    offer = parse_schedule("topk+q8|q8", 0.02)[0]
    v = np.random.default_rng(4).normal(0, 1, DIMS)
    for c in offer:
        check_compression(UpdateEncoder(DIMS).encode(v, c), DIMS, offer)
    for wrong in (Compression("none"), Compression("topk", 0.02), Compression("topk+q8", 0.2)):
        with pytest.raises(MalformedError) as exc:
            check_compression(UpdateEncoder(DIMS).encode(v, wrong), DIMS, offer)
        assert exc.value.code == "compression_mismatch"
