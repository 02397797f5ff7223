"""NumPy models: analytic gradients match finite differences; shapes are checked."""

from __future__ import annotations

import numpy as np
import pytest

from iotguard.errors import ConfigError, MalformedError
from iotguard.learn.model import Model, accuracy, flatten, sgd, unflatten


@pytest.mark.parametrize("hidden", [0, 5])
def test_gradient_matches_finite_differences(hidden: int) -> None:
    rng = np.random.default_rng(0)
    model = Model(features=4, classes=3, hidden=hidden, l2=1e-3)
    params = [p + rng.normal(0, 0.1, p.shape) for p in model.initial(1)]
    x, y = rng.normal(0, 1, (8, 4)), rng.integers(0, 3, 8)
    _, grads = model.loss_and_grad(params, x, y)
    flat, g = flatten(params), flatten(grads)
    for i in rng.choice(flat.size, 10, replace=False):
        e = np.zeros_like(flat)
        e[i] = 1e-6
        up = model.loss_and_grad(unflatten(flat + e, params), x, y)[0]
        down = model.loss_and_grad(unflatten(flat - e, params), x, y)[0]
        assert (up - down) / 2e-6 == pytest.approx(g[i], abs=1e-5)


def test_sgd_learns_separable_task() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (200, 2))
    y = (x[:, 0] > 0).astype(np.int64)
    model = Model(features=2, classes=2)
    params = sgd(model, model.initial(0), x, y, epochs=20, batch_size=16, lr=0.5, rng=rng)
    assert accuracy(model, params, x, y) > 0.95


def test_wrong_shapes_and_non_finite_rejected() -> None:
    model = Model(features=3, classes=2)
    with pytest.raises(MalformedError) as e:
        model.check([np.zeros((2, 2)), np.zeros(2)])
    assert e.value.code == "parameters_shape"
    with pytest.raises(MalformedError) as e:
        model.check([np.full((3, 2), np.nan), np.zeros(2)])
    assert e.value.code == "parameters_not_finite"
    with pytest.raises(MalformedError):
        unflatten(np.zeros(3), model.initial(0))
    with pytest.raises(ConfigError):
        Model(features=4000, classes=400)
