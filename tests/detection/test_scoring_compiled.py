"""The Numba-compiled scoring pass against the folded NumPy form and the float64 batched reference.

Both scoring paths must give the reference's scores to float32 precision on
rows inside and far outside the training range, order rows the same way, and
follow ``AutoencoderConfig.compiled``; the rational ``tanh`` must stay within
float32 rounding of the true one.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from iotguard.detection import autoencoder as autoencoder_module
from iotguard.detection.autoencoder import AutoencoderConfig, AutoencoderEnsemble
from iotguard.errors import ConfigError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba not installed")


def _rows(rng: np.random.Generator, n: int, features: int = 37) -> np.ndarray:
    base = rng.normal(size=(n, 4))
    mix = rng.normal(size=(4, features))
    return base @ mix + 0.1 * rng.normal(size=(n, features))


@pytest.mark.parametrize("seed", [3, 4])
def test_compiled_scores_equal_the_reference_and_the_numpy_form(seed: int) -> None:
    rng = np.random.default_rng(seed)
    train = _rows(rng, 1500)
    fast = AutoencoderEnsemble(AutoencoderConfig(compiled=True)).fit(train)
    plain = AutoencoderEnsemble(AutoencoderConfig(compiled=False)).fit(train)
    assert fast.compiled and not plain.compiled
    # Inside the training range, and far outside it (saturated sigmoids, large errors).
    x = np.concatenate([_rows(rng, 700), 6.0 * _rows(rng, 300)])
    reference = fast.score_reference(x)
    np.testing.assert_allclose(plain.score_reference(x), reference)  # the same training either way
    for scores in (fast.score(x), plain.score(x)):
        np.testing.assert_allclose(scores, reference, rtol=2e-5, atol=1e-6 * reference.max())
    # Rows are ranked alike: the compiled pass changes no order beyond float32 ties.
    assert np.corrcoef(np.argsort(np.argsort(fast.score(x))), np.argsort(np.argsort(reference)))[0, 1] > 0.9999


def test_compiled_pass_would_catch_a_wrong_block() -> None:
    rng = np.random.default_rng(5)
    fast = AutoencoderEnsemble(AutoencoderConfig(compiled=True)).fit(_rows(rng, 1200))
    x = _rows(rng, 200)
    reference = fast.score_reference(x)
    fast._c_w2 = fast._c_w2[::-1].copy()  # each feature reading another feature's weights
    assert not np.allclose(fast.score(x), reference, rtol=2e-5, atol=1e-6 * reference.max())


def test_rational_tanh_is_within_float32_rounding() -> None:
    import numba

    from iotguard.detection._compiled_scoring import _tanh

    @numba.njit
    def apply(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = _tanh(x[i])
        return out

    x = np.linspace(-20.0, 20.0, 400_001).astype(np.float32)
    error = np.abs(apply(x).astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert error.max() < 5e-7


def test_compiled_scoring_without_numba_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoencoder_module, "_scoring_kernel", lambda: None)
    with pytest.raises(ConfigError):
        AutoencoderEnsemble(AutoencoderConfig(compiled=True))
    assert not AutoencoderEnsemble().compiled  # the default falls back to the NumPy form
