"""Updates through secure aggregation: the hub gets the sum and nothing it could read an update from."""

from __future__ import annotations

import numpy as np
import pytest

from iotguard.analytics.secagg import AggregationError
from iotguard.errors import ConfigError
from iotguard.learn.secure import secure_sum


def _vectors(n: int, dims: int = 40, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0, 0.5, dims) for i in range(n)}


def test_secure_sum_equals_plain_sum_within_fixed_point_error() -> None:
    vecs = _vectors(6)
    total, view = secure_sum(vecs, bound=4.0)
    assert np.allclose(total, sum(vecs.values()), atol=6 / view.scale)


def test_secure_sum_recovers_after_dropout_and_sums_only_survivors() -> None:
    vecs = _vectors(7, seed=1)
    total, view = secure_sum(vecs, bound=4.0, drop_after_sharing=[2, 5])
    expected = sum(v for i, v in vecs.items() if i not in (2, 5))
    assert np.allclose(total, expected, atol=7 / view.scale)
    assert sorted(view.masked) == [0, 1, 3, 4, 6]


def test_hub_view_holds_no_individual_update_in_clear() -> None:
    vecs = _vectors(5, dims=64, seed=2)
    _, view = secure_sum(vecs, bound=4.0)
    for i, masked in view.masked.items():
        fixed = (np.round(vecs[i] * view.scale).astype(np.int64) % (1 << 32)).astype(np.uint32)
        assert not np.any(masked == fixed)  # a uniform mask hits a given word with probability 2^-32
        decoded = masked.astype(np.int64)
        decoded[decoded >= 1 << 31] -= 1 << 32
        # read as an update, a masked vector is noise spread over the whole 32-bit range, uncorrelated
        assert abs(np.corrcoef(decoded / view.scale, vecs[i])[0, 1]) < 0.5
        assert np.max(np.abs(decoded / view.scale)) > 2 * 4.0  # far outside the clamp every update obeys


def test_too_many_dropouts_reveal_nothing() -> None:
    with pytest.raises(AggregationError) as e:
        secure_sum(_vectors(5), bound=4.0, drop_after_sharing=[0, 1, 2])
    assert e.value.reason == "too_few_survivors"


def test_bound_that_cannot_fit_32_bits_refused() -> None:
    with pytest.raises(ConfigError):
        secure_sum(_vectors(3), bound=1e10)
