"""Distributed discrete-Gaussian DP for secure aggregation: the integer encoding, its sensitivity bound,
the noise's scale, exact sums modulo 2^32, and plans that cannot fit 32 bits refused."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from iotguard.errors import ConfigError, MalformedError
from iotguard.learn.distributed import SecureRoundPlan, discrete_gaussian, plan_round, round_coordinates


def _no_noise(values: list[int], std: float) -> list[int]:
    return values


def test_the_sum_of_encoded_updates_decodes_to_the_sum_of_the_clipped_updates() -> None:
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 1, 50) for _ in range(7)]
    plan = plan_round(50, 2.0, 0.0, members=7, threshold=4)
    total = np.zeros(50, np.uint64)
    for u in updates:
        total = (total + plan.encode(u, _no_noise)) % (1 << 32)
    clipped = sum(u * min(1.0, 2.0 / np.linalg.norm(u)) for u in updates)
    got = plan.decode_sum([int(x) for x in total])
    assert np.max(np.abs(got - clipped)) <= 7 * 0.5 / plan.scale + 1e-12  # rounding only
    assert np.any(got < 0)  # two's complement decodes negatives


def test_one_devices_integer_vector_stays_within_the_stated_sensitivity() -> None:
    plan = plan_round(400, 1.0, 0.0, members=10, threshold=6)
    worst = np.full(400, 10.0)  # far over the clip norm, every coordinate rounding the same way
    ints = plan.encode(worst, _no_noise).astype(np.int64)
    ints[ints >= 1 << 31] -= 1 << 32
    assert np.linalg.norm(ints) <= plan.sensitivity
    assert plan.sensitivity == plan.scale * 1.0 + math.sqrt(400) / 2


def test_noise_per_device_gives_the_sum_of_threshold_devices_the_calibrated_scale() -> None:
    z, t = 1.3, 6
    plan = plan_round(2000, 1.0, z, members=10, threshold=t)
    assert plan.noise_std == pytest.approx(z * plan.sensitivity / math.sqrt(t))
    noise = np.asarray(discrete_gaussian([0] * 2000, plan.noise_std), dtype=np.float64)
    assert all(float(v).is_integer() for v in noise[:20])
    assert np.std(noise) == pytest.approx(plan.noise_std, rel=0.08)
    assert abs(np.mean(noise)) < 4 * plan.noise_std / math.sqrt(2000)
    # t devices' noise together: at least z times the sensitivity
    assert math.sqrt(t) * plan.noise_std >= z * plan.sensitivity * (1 - 1e-12)


def test_all_members_noised_sums_do_not_wrap() -> None:
    plan = plan_round(300, 0.5, 2.0, members=12, threshold=7)
    worst = 12 * plan.scale * 0.5 + 8 * math.sqrt(12) * plan.noise_std
    assert worst < 2**31


def test_noised_encoding_is_unbiased_around_the_clipped_sum() -> None:
    rng = np.random.default_rng(5)
    updates = [rng.normal(0, 0.05, 200) for _ in range(10)]
    plan = plan_round(200, 1.0, 0.5, members=10, threshold=6)
    total = np.zeros(200, np.uint64)
    for u in updates:
        total = (total + plan.encode(u, discrete_gaussian)) % (1 << 32)
    err = plan.decode_sum([int(x) for x in total]) - sum(updates)
    sd = math.sqrt(10) * plan.noise_std / plan.scale
    assert np.std(err) == pytest.approx(sd, rel=0.2)


def test_plans_that_do_not_fit_32_bits_or_are_malformed_are_refused() -> None:
    with pytest.raises(ConfigError):
        plan_round(10, 1.0, 1.0, members=5, threshold=6)
    with pytest.raises(ConfigError):
        plan_round(10, 1e9, 1.0, members=5, threshold=3)
    with pytest.raises(MalformedError):
        SecureRoundPlan(10, 1.0, 0.5, 1.0)  # a scale below 1 unit
    with pytest.raises(MalformedError):
        SecureRoundPlan(10, float("nan"), 10.0, 1.0)
    plan = plan_round(4, 1.0, 0.0, members=3, threshold=2)
    with pytest.raises(MalformedError):
        plan.decode_sum([0, 1, 2])
    with pytest.raises(MalformedError):
        plan.decode_sum([0, 1, 2, 1 << 32])
    with pytest.raises(ConfigError):
        plan.encode(np.array([0.0, 1.0, np.inf, 0.0]), _no_noise)


def test_round_coordinates_are_the_same_everywhere_for_a_round_and_differ_between_rounds() -> None:
    a = round_coordinates("a" * 32, 1000, 100)
    assert np.array_equal(a, round_coordinates("a" * 32, 1000, 100))
    assert a.shape == (100,) and np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 1000
    b = round_coordinates("b" * 32, 1000, 100)
    assert len(set(a.tolist()) & set(b.tolist())) < 40  # about 10 expected by chance
    # A device and a hub on other platforms or NumPy versions must pick the same coordinates: the rule, in
    # plain Python (SHAKE-256 of the round id, 64-bit little-endian ranks, the lowest kept, ties by index).
    stream = hashlib.shake_256(b"iotguard-randk-v1|" + b"0" * 32).digest(8 * 16)
    ranks = [(int.from_bytes(stream[8 * i:8 * i + 8], "little"), i) for i in range(16)]
    assert round_coordinates("0" * 32, 16, 4).tolist() == sorted(i for _, i in sorted(ranks)[:4]) == [3, 11, 12, 15]
    for bad in ((0, 10), (11, 10), (5, 1 << 21)):
        with pytest.raises(ConfigError):
            round_coordinates("a" * 32, bad[1], bad[0])


def test_a_random_k_plan_sends_k_words_keeps_the_rest_as_residual_and_scatters_the_sum_back() -> None:
    plan = plan_round(400, 1.0, 0.0, members=10, threshold=6, kept_fraction=0.1)
    assert (plan.dims, plan.model_dims) == (40, 400)
    assert plan.sensitivity == plan.scale * 1.0 + math.sqrt(40) / 2  # rounding error over the k sent words
    update = np.random.default_rng(2).normal(0, 0.01, 400)
    sent, residual = plan.sparsify(update, "c" * 32)
    idx = round_coordinates("c" * 32, 400, 40)
    assert np.array_equal(sent, update[idx]) and np.all(residual[idx] == 0)
    assert np.allclose(plan.scatter(sent, "c" * 32) + residual, update)
    vectors = [plan.encode(plan.sparsify(update, "c" * 32)[0], discrete_gaussian) for _ in range(3)]
    assert all(v.shape == (40,) for v in vectors)
    total = np.sum([v.astype(np.int64) for v in vectors], axis=0) % (1 << 32)
    assert np.allclose(plan.scatter(plan.decode_sum(total.tolist()), "c" * 32), 3 * plan.scatter(sent, "c" * 32),
                       atol=3 / plan.scale)
    with pytest.raises(MalformedError):
        SecureRoundPlan(50, 1.0, 10.0, 0.0, model_dims=40)  # more words sent than the model has
