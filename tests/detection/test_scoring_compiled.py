"""The Numba-compiled scoring passes against the folded NumPy form and the float64 batched reference.

Both scoring paths must give the reference's scores to float32 precision on
rows inside and far outside the training range, order rows the same way, and
follow ``AutoencoderConfig.compiled``; the tiled pass (ADR 0713) must give
the general pass's scores to float32 rounding; the rational ``tanh`` must
stay within float32 rounding of the true one.
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


def _extreme(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Rows far outside any training range: every sigmoid saturated, errors in the millions."""
    features = x.shape[1]
    return np.concatenate([1e3 * x, np.full((40, features), 1e6), np.full((40, features), -1e6),
                           rng.choice([-1e7, 0.0, 1e7], size=(200, features)),
                           rng.uniform(-30.0, 30.0, size=(300, features))])


# (features, max_subset, tiled): the default shape; subsets and hidden layers smaller than the tile (padded);
# subsets larger than the tile (the general pass).
_SHAPES = [(37, 8, True), (20, 5, True), (37, 12, False)]


def _general(ensemble: AutoencoderEnsemble, x: np.ndarray) -> np.ndarray:
    from iotguard.detection._compiled_scoring import score_folded

    e = ensemble
    out = np.empty(x.shape[0])
    score_folded(np.ascontiguousarray(x), e._f_inv, e._f_shift, e._c_order, e._c_starts, e._c_w1, e._c_c1,
                 e._c_w2, e._f_c2, e._c_inv_size, e._f_einv, e._f_eshift, e._f_o1, e._f_oc1, e._f_o2, e._f_oc2, out)
    return out


@pytest.mark.parametrize(("features", "max_subset", "tiled"), _SHAPES)
def test_compiled_scores_equal_the_numpy_folded_form_on_random_and_extreme_rows(
        features: int, max_subset: int, tiled: bool) -> None:
    rng = np.random.default_rng(7)
    fast = AutoencoderEnsemble(AutoencoderConfig(compiled=True, max_subset=max_subset)).fit(_rows(rng, 1500, features))
    assert (fast._c_tiles is not None) == tiled
    x = _rows(rng, 500, features)
    for rows in (x, _extreme(rng, x)):
        # The NumPy folded form of the same ensemble: same float32 weights, NumPy's tanh, BLAS sums.
        np.testing.assert_allclose(fast.score(rows), fast._score(rows), rtol=1e-5)


@pytest.mark.parametrize(("features", "max_subset"), [(f, m) for f, m, tiled in _SHAPES if tiled] + [(51, 8)])
def test_tiled_pass_equals_the_general_pass(features: int, max_subset: int) -> None:
    rng = np.random.default_rng(8)
    fast = AutoencoderEnsemble(AutoencoderConfig(compiled=True, max_subset=max_subset)).fit(_rows(rng, 1500, features))
    assert fast._c_tiles is not None
    x = _rows(rng, 700, features)
    for rows in (x, _extreme(rng, x)):
        # Same operations in the same order per row; only where LLVM fuses a product into a sum differs.
        np.testing.assert_allclose(fast.score(rows), _general(fast, rows), rtol=2e-6)


@pytest.mark.parametrize("max_subset", [8, 12])
def test_compiled_pass_would_catch_a_wrong_block(max_subset: int) -> None:
    rng = np.random.default_rng(5)
    fast = AutoencoderEnsemble(AutoencoderConfig(compiled=True, max_subset=max_subset)).fit(_rows(rng, 1200))
    x = _rows(rng, 200)
    reference = fast.score_reference(x)
    # Each feature reading another feature's weights, in the pass that scores this shape.
    fast._c_w2 = fast._c_w2[::-1].copy()
    if fast._c_tiles is not None:
        fast._c_tiles = fast._c_tiles._replace(w2=fast._c_tiles.w2[::-1, ::-1].copy())
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
