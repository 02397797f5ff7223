"""Poisoning: one device's scaled malicious update cannot move the robust aggregate beyond the honest envelope."""

from __future__ import annotations

import numpy as np
import pytest

from iotguard.errors import ConfigError, MalformedError
from iotguard.learn.client import Update
from iotguard.learn.compress import Compression, UpdateEncoder
from iotguard.learn.model import Model
from iotguard.learn.robust import check_norm, coordinate_median, honest_envelope_bound, trimmed_mean, weighted_mean
from iotguard.learn.strategy import FedAvg, FedAvgConfig

SCALE = 1000.0


def _honest(n: int = 9, dims: int = 50, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    direction = rng.normal(0, 1, dims)
    return [direction + rng.normal(0, 0.3, dims) for _ in range(n)]


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_scaled_malicious_update_cannot_move_robust_aggregate_beyond_honest_envelope(rule: str) -> None:
    honest = _honest()
    clean = coordinate_median(honest) if rule == "median" else trimmed_mean(honest, 0.1)
    malicious = -SCALE * honest[0]
    poisoned_in = [*honest, malicious]
    poisoned = coordinate_median(poisoned_in) if rule == "median" else trimmed_mean(poisoned_in, 0.1)
    # The stated bound: the robust aggregate stays inside the honest updates' coordinate-wise box.
    bound = honest_envelope_bound(honest, clean)
    shift = float(np.linalg.norm(poisoned - clean))
    assert shift <= bound
    lo, hi = np.min(honest, axis=0), np.max(honest, axis=0)
    assert np.all((poisoned >= lo) & (poisoned <= hi))
    # ... while the plain mean is dragged a hundred-fold further.
    mean_shift = float(np.linalg.norm(weighted_mean(poisoned_in, [1.0] * 10) - weighted_mean(honest, [1.0] * 9)))
    assert mean_shift > 50 * bound


def test_norm_check_rejects_scaled_update_and_non_finite() -> None:
    check_norm(np.ones(4), 2.0)
    with pytest.raises(MalformedError) as e:
        check_norm(np.ones(4) * 10, 2.0)
    assert e.value.code == "update_norm_exceeded"
    with pytest.raises(MalformedError) as e:
        check_norm(np.array([np.nan, 0.0]), 2.0)
    assert e.value.code == "update_not_finite"


def test_fedavg_with_norm_check_drops_the_poisoning_device_with_a_reason() -> None:
    model = Model(features=4, classes=3)
    dims = model.size()
    fed = FedAvg(model, model.initial(0), FedAvgConfig(min_participants=2, aggregator="median", max_update_norm=5.0))
    rng = np.random.default_rng(1)
    updates = []
    for i in range(4):
        vec = rng.normal(0, 0.1, dims) * (1000.0 if i == 3 else 1.0)
        payload = UpdateEncoder(dims).encode(vec, Compression("none"))
        updates.append(Update(f"d{i}", f"s{i}", 0, payload, vec, 10))
    outcome = fed.apply_round(updates)
    assert outcome.applied
    assert outcome.rejected == (("d3", "update_norm_exceeded"),)
    assert float(np.linalg.norm(np.concatenate([p.ravel() for p in fed.parameters]))) < 5.0


def test_robust_rules_refuse_secure_aggregation() -> None:
    with pytest.raises(ConfigError):
        FedAvgConfig(aggregator="median", secure=True)


def test_trimmed_mean_needs_rows_left() -> None:
    with pytest.raises(ConfigError):
        trimmed_mean([np.zeros(2)] * 2, 0.49)
