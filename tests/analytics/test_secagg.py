"""Secure aggregation: the aggregator only ever holds masked vectors, and the sum is exact with a third dropped."""

from __future__ import annotations

import dataclasses
import secrets as secrets_
from typing import Any

import numpy as np
import pytest

from iotguard.analytics.secagg import PRIME, AggregationError, Aggregator, Device, Share, combine, prg, split
from iotguard.errors import ConfigError
from tests.analytics.secagg_helpers import graph_round

N, T, DIMS = 30, 16, 64


def _round(seed: int = 0) -> tuple[list[Device], Aggregator, list[np.ndarray], list[Any]]:
    rng = np.random.default_rng(seed)
    values = [rng.integers(0, 1 << 20, DIMS, dtype=np.uint32) for _ in range(N)]
    devices = [Device(i, v) for i, v in enumerate(values)]
    agg = Aggregator(N, T, DIMS)
    received: list[Any] = []
    for name in ("add_public_key", "add_masked", "unmask"):  # instrument everything the hub is given
        original = getattr(agg, name)

        def spy(*args: Any, _original: Any = original) -> Any:
            received.append(args)
            return _original(*args)

        setattr(agg, name, spy)
    for d in devices:
        agg.add_public_key(d.index, d.public_key)
    for d in devices:  # round 1: device-to-device shares (over the channel; the hub relays them encrypted)
        for s in d.shares_for_peers(N, T):
            devices[s.holder].receive_share(s)
    return devices, agg, values, received


def test_sum_is_exact_with_a_third_dropped_and_the_hub_never_holds_a_value() -> None:
    devices, agg, values, received = _round()
    dropped = set(range(0, N, 3))  # 10 of 30 drop after sharing, before sending their masked vector
    survivors = [d for d in devices if d.index not in dropped]
    keys = dict(agg.public_keys)
    for d in survivors:
        agg.add_masked(d.index, d.masked_input(keys))
    shares = [s for d in survivors for s in d.unmask_shares([x.index for x in survivors], sorted(dropped))]
    total = agg.unmask(shares)
    expected = np.zeros(DIMS, dtype=np.uint64)
    for d in survivors:
        expected += values[d.index]
    assert np.array_equal(total, (expected % (1 << 32)).astype(np.uint32))
    # instrumented: nothing the hub received equals or contains a device's value
    arrays = [a for args in received for a in args if isinstance(a, np.ndarray)]
    assert len(arrays) == len(survivors)
    for a in arrays:
        assert not any(np.array_equal(a, v) for v in values)
        assert np.count_nonzero(a >= (1 << 20)) > DIMS // 2  # masked: spread over 2^32, not < 2^20
    # the hub never got both secrets of one device
    kinds: dict[int, set[str]] = {}
    for s in shares:
        kinds.setdefault(s.owner, set()).add(s.kind)
    assert all(len(k - {"pair"}) == 1 for k in kinds.values())  # a pair seed s_uv is no secret of the device


def test_a_device_refuses_to_reveal_both_secrets_of_one_peer() -> None:
    devices, _agg, _values, _ = _round()
    d = devices[1]
    d.unmask_shares([0, 2], [3])
    with pytest.raises(AggregationError) as e:
        d.unmask_shares([3], [])
    assert e.value.reason == "unmask_request_inconsistent"


def test_tampered_and_malformed_shares_are_rejected_with_a_reason() -> None:
    devices, agg, _values, _ = _round()
    dropped = {0, 1}
    survivors = [d for d in devices if d.index not in dropped]
    for d in survivors:
        agg.add_masked(d.index, d.masked_input(dict(agg.public_keys)))
    shares = [s for d in survivors for s in d.unmask_shares([x.index for x in survivors], sorted(dropped))]
    bad = [dataclasses.replace(s, y=(s.y + 1) % PRIME) if s.owner == 0 and s.holder == 29 else s for s in shares]
    with pytest.raises(AggregationError) as e:
        agg.unmask(bad)
    assert e.value.reason == "share_inconsistent"
    foreign = [*shares, Share(0, 0, "key", 5)]  # from a device that dropped
    with pytest.raises(AggregationError) as e:
        agg.unmask(foreign)
    assert e.value.reason == "share_malformed"
    dup = [*shares, dataclasses.replace(next(s for s in shares if s.owner == 0), y=7)]
    with pytest.raises(AggregationError) as e:
        agg.unmask(dup)
    assert e.value.reason == "share_duplicate"
    with pytest.raises(AggregationError) as e:
        agg.add_masked(2, np.zeros(DIMS + 1, dtype=np.uint32))
    assert e.value.reason == "masked_input_unexpected"  # device 2 already sent one
    with pytest.raises(AggregationError) as e:
        devices[3].receive_share(Share(0, 4, "key", 1))
    assert e.value.reason == "share_malformed"


def test_too_many_dropouts_cannot_unmask() -> None:
    devices, agg, _values, _ = _round()
    for d in devices[:T - 1]:
        agg.add_masked(d.index, d.masked_input(dict(agg.public_keys)))
    with pytest.raises(AggregationError) as e:
        agg.unmask([])
    assert e.value.reason == "too_few_survivors"


def test_shamir_threshold() -> None:
    secret = bytes(range(240, 256))  # 16 bytes, near the top of the range the field 2^128 + 51 must hold
    ys = split(secret, 5, 3)
    pts = [(i + 1, y) for i, y in enumerate(ys)]
    assert combine(pts[:3], 3) == secret and combine(pts[2:], 3) == secret
    assert PRIME == (1 << 128) + 51 and all(0 <= y < PRIME for y in ys)
    with pytest.raises(AggregationError):
        combine(pts[:2], 3)
    with pytest.raises(ConfigError):  # a secret beyond the field would come back reduced: refused
        split(b"\xff" * 17, 5, 3)


def test_batched_reconstruction_names_the_inconsistent_secret() -> None:
    from iotguard.analytics.secagg import reconstruct_all

    secrets_ = {f"s{i}": bytes([i]) * 16 for i in range(40)}
    holders = [x for x in range(1, 31) if x % 7]  # 26 holders, threshold 12: 14 extra points per secret
    points = {}
    for k, s in secrets_.items():
        ys = split(s, 31, 12)
        points[k] = [(x, ys[x - 1]) for x in holders]
    odd = split(b"\x01" * 16, 31, 12)  # another holder set: its own coefficients
    points["odd"] = [(x, odd[x - 1]) for x in (1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13)]
    assert reconstruct_all(points, 12) == {**secrets_, "odd": b"\x01" * 16}
    x, y = points["s17"][20]
    points["s17"][20] = (x, (y + 1) % PRIME)
    with pytest.raises(AggregationError) as e:
        reconstruct_all(points, 12)
    assert e.value.reason == "share_inconsistent" and "s17" in str(e.value)


def test_secagg_plus_graph_is_symmetric_regular_and_sums_exactly() -> None:
    from iotguard.analytics.secagg import harary_neighbours

    g = harary_neighbours(40, 8, b"round-1")
    assert all(len(v) == 8 and u not in v for u, v in g.items())
    assert all(u in g[v] for u, vs in g.items() for v in vs)
    assert g != harary_neighbours(40, 8, b"round-2")  # the labels follow the round's seed
    rng = np.random.default_rng(9)
    values = [rng.integers(0, 1 << 20, DIMS, dtype=np.uint32) for _ in range(40)]
    agg, shares, expected = graph_round(values, g, 5, {3, 17, 30})
    assert np.array_equal(agg.unmask(shares), expected)


def test_mask_prg_is_aes_256_ctr_against_the_nist_vector() -> None:
    # NIST SP 800-38A F.5.5 CTR-AES256.Encrypt, block 1: keystream = ciphertext XOR plaintext (the keystream
    # function is the one the AES-128 PRG runs; this vector checks it at the other key size)
    from iotguard.analytics.secagg import _keystream

    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    pt, ct = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a"), bytes.fromhex("601ec313775789a5b7a7f504bbf3d228")
    assert _keystream(key, counter, 4).tobytes() == bytes(a ^ b for a, b in zip(pt, ct, strict=True))
    words = prg(b"\x07" * 16, 1001)
    assert words.dtype == np.dtype("<u4") and words.shape == (1001,) and np.array_equal(words, prg(b"\x07" * 16, 1001))
    assert words[:1000].tobytes() == prg(b"\x07" * 16, 1000).tobytes()  # one keystream, any length


def test_mask_prg_is_aes_128_ctr_against_the_nist_vectors() -> None:
    """The PRG keyed by a 16-byte seed is AES-128-CTR: NIST SP 800-38A F.5.1 CTR-AES128.Encrypt, all four
    blocks (keystream = ciphertext XOR plaintext), and ``prg`` is that keystream from counter block 0."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from iotguard.analytics.secagg import _keystream

    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    # (published test vectors, not secrets)
    pt = bytes.fromhex(
        "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"  # pragma: allowlist secret
        "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"  # pragma: allowlist secret
    )
    ct = bytes.fromhex(
        "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"  # pragma: allowlist secret
        "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"  # pragma: allowlist secret
    )
    assert _keystream(key, counter, 16).tobytes() == bytes(a ^ b for a, b in zip(pt, ct, strict=True))
    zero_ctr = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(40))
    assert prg(key, 10).tobytes() == zero_ctr
    for bad in (b"\x07" * 32, b"\x07" * 15):
        with pytest.raises(ConfigError):
            prg(bad, 4)


def test_secagg_plus_degree_keeps_a_third_dropped_round_unmaskable() -> None:
    from iotguard.analytics.secagg import degree_failure_log2, secagg_plus_degree

    k = secagg_plus_degree(1000, 1 / 3)
    assert k == 296 and degree_failure_log2(1000, 333, k) <= -30 < degree_failure_log2(1000, 333, k - 2)
    # the degree 160 used before fails about once in 700 rounds (union bound 2^-9.5)
    assert -10 < degree_failure_log2(1000, 333, 160) < -9
    assert secagg_plus_degree(1000, 0.05) < secagg_plus_degree(1000, 0.1) < k
    assert secagg_plus_degree(10, 1 / 3) == 8 and secagg_plus_degree(10, 0.5) == 9  # no sparser graph: everyone


def test_pair_seeds_spare_the_hub_its_agreements_and_a_lying_holder_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import iotguard.analytics.secagg as secagg

    devices, agg, values, _ = _round()
    dropped = {0, 1}
    survivors = [d for d in devices if d.index not in dropped]
    for d in survivors:
        agg.add_masked(d.index, d.masked_input(dict(agg.public_keys)))
    shares = [s for d in survivors for s in d.unmask_shares([x.index for x in survivors], sorted(dropped))]
    assert sum(s.kind == "pair" for s in shares) == 2 * len(survivors)
    calls = []
    real = secagg._agree
    monkeypatch.setattr(secagg, "_agree", lambda *a: calls.append(a) or real(*a))
    total = agg.unmask(shares)
    expected = sum((values[d.index].astype(np.uint64) for d in survivors), np.zeros(DIMS, np.uint64))
    assert np.array_equal(total, (expected % (1 << 32)).astype(np.uint32))
    assert len(calls) == len(survivors)  # one spot check per holder, not one agreement per (dropped, survivor)
    # a holder that hands in wrong pair seeds (both of its own here, so the spot check cannot miss) is refused
    bad = [dataclasses.replace(s, y=s.y ^ 1) if s.kind == "pair" and s.holder == 29 else s for s in shares]
    agg2 = Aggregator(N, T, DIMS)
    agg2.public_keys, agg2.masked = dict(agg.public_keys), dict(agg.masked)
    with pytest.raises(AggregationError) as e:
        agg2.unmask(bad)
    assert e.value.reason == "share_inconsistent" and "from 29" in str(e.value)
    # a pair seed for a survivor, or from a device that did not survive, is malformed
    for forged in (Share(5, 29, "pair", 1), Share(0, 1, "pair", 1)):
        with pytest.raises(AggregationError) as e:
            agg2.unmask([*shares, forged])
        assert e.value.reason == "share_malformed"


def test_shares_on_a_polynomial_one_degree_too_high_are_inconsistent() -> None:
    """A dealer whose shares lie on a polynomial of degree t (one too many) breaks only the last of the
    ``m - t`` parity checks; the one-shot random combination of the checks must still catch it, whatever
    subset of holders answered."""
    from iotguard.analytics.secagg_shamir import _HolderSet, reconstruct_all

    t = 12
    for holders in ([x for x in range(1, 31) if x % 7], list(range(1, 14)), list(range(5, 400, 3))):
        coeffs = [secrets_.randbelow(PRIME) for _ in range(t + 1)]  # degree t
        ys = [sum(c * pow(x, k, PRIME) for k, c in enumerate(coeffs)) % PRIME for x in holders]
        assert not _HolderSet(holders, t).consistent(ys)
        assert _HolderSet(holders, t + 1).consistent(ys)  # at threshold t + 1 the same points are fine
        with pytest.raises(AggregationError) as e:
            reconstruct_all({"s": list(zip(holders, ys, strict=True))}, t)
        assert e.value.reason == "share_inconsistent"
