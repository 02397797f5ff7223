"""Learned baselines: calibration to the target FPR, per-device models with per-model fallback."""

from __future__ import annotations

import numpy as np
import pytest

from iotguard.detection import AutoencoderConfig, AutoencoderEnsemble, BaselineScorer, ScorerConfig
from iotguard.detection.autoencoder import feature_subsets
from iotguard.errors import ConfigError


def _benign(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    base = rng.normal(shift, 1.0, (n, 3))
    # correlated columns, as flow statistics are
    return np.concatenate([base, base * 0.5 + rng.normal(0, 0.1, (n, 3)), rng.uniform(0, 1, (n, 2))], axis=1)


def test_threshold_meets_target_fpr_on_fresh_benign_rows() -> None:
    rng = np.random.default_rng(1)
    scorer = BaselineScorer(ScorerConfig(target_fpr=0.01))
    scorer.fit(_benign(rng, 6000), np.full(6000, "d1"))
    fresh = scorer.score(_benign(rng, 20000), np.full(20000, "d1"))
    assert 0.002 <= (fresh > 1.0).mean() <= 0.03


def test_anomalies_score_above_threshold() -> None:
    rng = np.random.default_rng(2)
    scorer = BaselineScorer()
    scorer.fit(_benign(rng, 3000), np.full(3000, "d1"))
    odd = _benign(rng, 200)
    odd[:, 3:6] = -odd[:, 3:6]  # breaks the learned correlation, same marginal ranges
    assert (scorer.score(odd, np.full(200, "d1")) > 1.0).mean() > 0.5


def test_device_model_and_fallback_routing() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([_benign(rng, 1000), _benign(rng, 300, shift=5.0)])
    device = np.array(["busy"] * 1000 + [f"quiet-{i}" for i in range(300)])
    model = np.array(["thermo"] * 1000 + ["meter"] * 300)
    scorer = BaselineScorer(ScorerConfig(min_device_rows=500))
    scorer.fit(x, device, model)
    assert scorer.device_models == 1
    assert set(scorer.thresholds()) == {"device:busy", "model:*", "model:thermo", "model:meter"}
    meter_like = _benign(rng, 500, shift=5.0)
    # a new meter is scored by the meter model, where meter behaviour is normal ...
    as_meter = scorer.score(meter_like, np.full(500, "new-meter"), np.full(500, "meter"))
    assert (as_meter > 1.0).mean() < 0.05
    # ... while the busy thermostat's own model finds the same rows anomalous
    as_busy = scorer.score(meter_like, np.full(500, "busy"), np.full(500, "thermo"))
    assert (as_busy > 1.0).mean() > 0.9


def test_fit_needs_enough_finite_rows() -> None:
    with pytest.raises(ConfigError) as err:
        BaselineScorer().fit(np.zeros((5, 4)), np.full(5, "d"))
    assert err.value.code == "detection_too_few_rows"
    with pytest.raises(ConfigError):
        AutoencoderEnsemble().fit(np.full((50, 3), np.nan))
    with pytest.raises(ConfigError) as err:
        BaselineScorer().score(np.zeros((1, 4)), np.full(1, "d"))
    assert err.value.code == "detection_not_fitted"


def test_feature_subsets_group_correlated_columns_within_the_size_limit() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(500, 1)), rng.normal(size=(500, 1))
    x = np.concatenate([a, a * 2 + 0.01 * rng.normal(size=(500, 1)), b, -b, np.ones((500, 1))], axis=1)
    subsets = feature_subsets(x, max_subset=2)
    assert sorted(sorted(s) for s in subsets) == [[0, 1], [2, 3], [4]]
    assert all(len(s) <= 3 for s in feature_subsets(rng.normal(size=(100, 9)), 3))


def test_training_is_reproducible() -> None:
    rng = np.random.default_rng(5)
    x = _benign(rng, 800)
    one = AutoencoderEnsemble(AutoencoderConfig(seed=7)).fit(x).score(x[:50])
    two = AutoencoderEnsemble(AutoencoderConfig(seed=7)).fit(x).score(x[:50])
    np.testing.assert_array_equal(one, two)
