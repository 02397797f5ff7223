"""Small NumPy models a Linux-class device trains on its CPU.

A model is a list of float64 arrays (:data:`NDArrays`, Flower's name for
it) plus pure functions: :meth:`Model.loss_and_grad` and
:meth:`Model.predict`. Two architectures: multinomial logistic (softmax)
regression and a one-hidden-layer MLP with ReLU. Training is minibatch
SGD (:func:`sgd`) with a seeded generator, so a simulation replays
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError, MalformedError

__all__ = ["MAX_PARAMETERS", "Model", "NDArrays", "accuracy", "flatten", "sgd", "unflatten"]

Array = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int64]
NDArrays = list[Array]

#: Largest model (number of float parameters) a client or the hub accepts.
MAX_PARAMETERS = 1 << 20


def flatten(params: NDArrays) -> Array:
    """One float64 vector of every parameter, in order."""
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in params])


def unflatten(vector: Array, like: NDArrays) -> NDArrays:
    """Arrays shaped like ``like`` from one vector.

    Raises:
        MalformedError: ``parameters_shape`` when the length does not match.
    """
    total = sum(p.size for p in like)
    if vector.shape != (total,):
        raise MalformedError(f"expected {total} parameters, got {vector.shape}", code="parameters_shape")
    out, at = [], 0
    for p in like:
        out.append(vector[at:at + p.size].reshape(p.shape).astype(np.float64))
        at += p.size
    return out


@dataclass(frozen=True)
class Model:
    """Architecture: ``hidden == 0`` is softmax regression, else an MLP with one ReLU layer.

    Attributes:
        features: Input width.
        classes: Number of classes.
        hidden: Hidden units (0 for none).
        l2: L2 penalty on weights.
    """

    features: int
    classes: int
    hidden: int = 0
    l2: float = 1e-4

    def __post_init__(self) -> None:
        if self.features < 1 or self.classes < 2 or self.hidden < 0:
            raise ConfigError("model needs features >= 1, classes >= 2, hidden >= 0")
        if self.size() > MAX_PARAMETERS:
            raise ConfigError(f"model has more than {MAX_PARAMETERS} parameters")

    def size(self) -> int:
        """Number of float parameters."""
        if self.hidden == 0:
            return self.features * self.classes + self.classes
        return self.features * self.hidden + self.hidden + self.hidden * self.classes + self.classes

    def initial(self, seed: int) -> NDArrays:
        """Initial parameters (zeros for softmax regression, He-scaled for the MLP)."""
        if self.hidden == 0:
            return [np.zeros((self.features, self.classes)), np.zeros(self.classes)]
        rng = np.random.default_rng(seed)
        return [
            rng.normal(0.0, np.sqrt(2.0 / self.features), (self.features, self.hidden)),
            np.zeros(self.hidden),
            rng.normal(0.0, np.sqrt(2.0 / self.hidden), (self.hidden, self.classes)),
            np.zeros(self.classes),
        ]

    def check(self, params: NDArrays) -> None:
        """Raise unless ``params`` has this model's shapes and finite values.

        Raises:
            MalformedError: ``parameters_shape`` or ``parameters_not_finite``.
        """
        shapes = [(self.features, self.classes), (self.classes,)] if self.hidden == 0 else [
            (self.features, self.hidden), (self.hidden,), (self.hidden, self.classes), (self.classes,)]
        if len(params) != len(shapes) or any(np.shape(p) != s for p, s in zip(params, shapes, strict=True)):
            raise MalformedError("parameters do not match the model", code="parameters_shape")
        if not all(np.all(np.isfinite(p)) for p in params):
            raise MalformedError("parameters are not finite", code="parameters_not_finite")

    def _logits(self, params: NDArrays, x: Array) -> tuple[Array, Array | None]:
        if self.hidden == 0:
            return x @ params[0] + params[1], None
        h = np.maximum(x @ params[0] + params[1], 0.0)
        return h @ params[2] + params[3], h

    def predict(self, params: NDArrays, x: Array) -> Labels:
        """Most likely class of each row of ``x``."""
        logits, _ = self._logits(params, x)
        out: Labels = np.argmax(logits, axis=1).astype(np.int64)
        return out

    def probabilities(self, params: NDArrays, x: Array) -> Array:
        """Class probabilities (softmax) of each row of ``x``."""
        logits, _ = self._logits(params, x)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out: Array = e / e.sum(axis=1, keepdims=True)
        return out

    def loss_and_grad(self, params: NDArrays, x: Array, y: Labels) -> tuple[float, NDArrays]:
        """Mean cross-entropy (plus L2) over the batch and its gradient."""
        n = len(y)
        logits, h = self._logits(params, x)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(p[np.arange(n), y] + 1e-12)))
        d = p
        d[np.arange(n), y] -= 1.0
        d /= n
        weights = [params[0]] if h is None else [params[0], params[2]]
        loss += 0.5 * self.l2 * sum(float(np.sum(w * w)) for w in weights)
        if h is None:
            return loss, [x.T @ d + self.l2 * params[0], d.sum(axis=0)]
        dh = (d @ params[2].T) * (h > 0)
        return loss, [x.T @ dh + self.l2 * params[0], dh.sum(axis=0), h.T @ d + self.l2 * params[2], d.sum(axis=0)]


def sgd(model: Model, params: NDArrays, x: Array, y: Labels, *, epochs: int, batch_size: int, lr: float,
        rng: np.random.Generator) -> NDArrays:
    """Minibatch SGD on ``(x, y)`` from ``params``; returns new parameters."""
    out = [p.copy() for p in params]
    n = len(y)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            _, grads = model.loss_and_grad(out, x[idx], y[idx])
            for p, g in zip(out, grads, strict=True):
                p -= lr * g
    return out


def accuracy(model: Model, params: NDArrays, x: Array, y: Labels) -> float:
    """Fraction of rows classified correctly."""
    return float(np.mean(model.predict(params, x) == y)) if len(y) else 0.0
