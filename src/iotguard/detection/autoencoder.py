"""An ensemble of small autoencoders over feature subsets (KitNET, as in Kitsune).

Features are grouped by correlation into subsets of at most ``max_subset``
columns; one small autoencoder per subset learns to reconstruct benign
behaviour, and an output autoencoder learns the normal pattern of the
ensemble's reconstruction errors. The anomaly score of a flow is the output
autoencoder's reconstruction error (RMSE). Inputs are min-max scaled with
the training range and outputs are sigmoids, so behaviour outside what was
seen in training cannot be reconstructed and scores high.

All subsets are padded to one width and trained together with batched
matrix products (``numpy.matmul``). After training the ensemble is folded
into block-diagonal dense matrices in float32 (the subsets partition the
columns, so the whole first layer is one matrix product, and so are the
second layer and the per-subset error sums); the min-max scaling and the
sigmoids' factor 1/2 are folded into the weights. Scoring a batch of flows
is then six matrix products and a few elementwise operations whatever the
number of subsets, and equals the batched form to float32 precision.
"""

from __future__ import annotations

import importlib
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from iotguard.errors import ConfigError

__all__ = ["AutoencoderConfig", "AutoencoderEnsemble", "feature_subsets", "one_blas_thread"]

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Training settings.

    Attributes:
        max_subset: Largest feature subset per autoencoder.
        hidden_ratio: Hidden units per input unit.
        epochs: Passes over the training rows (at least; see ``min_steps``).
        min_steps: Gradient steps at least: a small training set is passed over
            more often, so a device with a few hundred rows (or a model with a
            few dozen) gets a trained ensemble, not ten steps from its random start.
        batch_size: Rows per gradient step.
        learning_rate: Adam step size.
        max_rows: Training rows used at most (a uniform sample beyond it).
        seed: Initialisation and shuffling seed.
        compiled: Score with the Numba-compiled pass (ADR 0706): ``None`` when
            Numba imports, ``True`` always (an error without Numba), ``False``
            never (the NumPy folded form). It compiles on first use (about a
            CPU second). Training is the same either way.
    """

    max_subset: int = 8
    hidden_ratio: float = 0.75
    epochs: int = 10
    min_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 0.01
    max_rows: int = 4000
    seed: int = 0
    compiled: bool | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.max_subset <= 64 or not 0 < self.hidden_ratio <= 1:
            raise ConfigError("max_subset or hidden_ratio out of range", code="detection_config_invalid")
        if not 0 <= self.min_steps <= 100_000:
            raise ConfigError("min_steps out of range", code="detection_config_invalid")
        if not 1 <= self.epochs <= 1000 or not 1 <= self.batch_size <= 65536 or self.learning_rate <= 0:
            raise ConfigError("epochs, batch_size or learning_rate out of range", code="detection_config_invalid")


def feature_subsets(x: FloatArray, max_subset: int) -> list[list[int]]:
    """Group columns by correlation (average linkage on ``1 - |corr|``), each group at most ``max_subset``.

    Columns constant in ``x`` have no correlation and are grouped among themselves.
    """
    n_features = x.shape[1]
    std = x.std(axis=0)
    varying = std > 1e-12
    dist = np.ones((n_features, n_features))
    if varying.sum() > 1:
        corr = np.corrcoef(x[:, varying], rowvar=False)
        idx = np.flatnonzero(varying)
        dist[np.ix_(idx, idx)] = 1.0 - np.abs(np.nan_to_num(corr))
    clusters: list[list[int]] = [[i] for i in range(n_features)]
    while True:
        best: tuple[float, int, int] | None = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                if len(clusters[a]) + len(clusters[b]) > max_subset:
                    continue
                d = float(dist[np.ix_(clusters[a], clusters[b])].mean())
                if best is None or d < best[0]:
                    best = (d, a, b)
        if best is None:
            return clusters
        _, a, b = best
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]


@cache
def _scoring_kernel() -> ModuleType | None:
    """The compiled scoring module (compiled on first use); ``None`` without Numba."""
    try:
        return importlib.import_module("iotguard.detection._compiled_scoring")
    except ImportError:
        return None


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread() -> AbstractContextManager[object]:
    """Context in which BLAS runs on the calling thread only.

    The products here are small (a batch of flows times a few dozen
    columns): a second BLAS thread saves no time and spins for CPU it does
    not use, which on a shared hub core is cost without benefit.
    """
    limit: AbstractContextManager[object] = _blas().limit(limits=1, user_api="blas")
    return limit


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def _squared_residual(x: F32Array, a1: F32Array, c1: F32Array, a2: F32Array, c2: F32Array) -> F32Array:
    """(y - x)^2 of a folded two-layer sigmoid autoencoder, y = (1 + tanh(tanh(x a1 + c1) a2 + c2)) / 2."""
    v: F32Array = np.tanh(np.tanh(x @ a1 + c1) @ a2 + c2)
    v *= 0.5
    v += 0.5
    v -= x
    v *= v
    return v


class _Layer:
    """``k`` autoencoders of width ``m`` with ``h`` hidden units, trained together."""

    def __init__(self, k: int, m: int, h: int, rng: np.random.Generator) -> None:
        bound = 1.0 / math.sqrt(m)
        self.w1 = rng.uniform(-bound, bound, (k, m, h))
        self.b1 = np.zeros((k, 1, h))
        self.w2 = rng.uniform(-bound, bound, (k, h, m))
        self.b2 = np.zeros((k, 1, m))

    def rmse(self, x: FloatArray, mask: FloatArray) -> FloatArray:
        """Reconstruction RMSE, shape ``(k, n)``, of inputs ``x`` ``(k, n, m)``."""
        hidden = _sigmoid(np.matmul(x, self.w1) + self.b1)
        y = _sigmoid(np.matmul(hidden, self.w2) + self.b2)
        err = ((y - x) ** 2 * mask).sum(axis=2) / mask.sum(axis=2)
        out: FloatArray = np.sqrt(err)
        return out

    def fit(self, x: FloatArray, mask: FloatArray, cfg: AutoencoderConfig, rng: np.random.Generator) -> None:
        params = [self.w1, self.b1, self.w2, self.b2]
        m1 = [np.zeros_like(p) for p in params]
        m2 = [np.zeros_like(p) for p in params]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        n = x.shape[1]
        step = 0
        epochs = max(cfg.epochs, math.ceil(cfg.min_steps / math.ceil(n / cfg.batch_size)))
        for _ in range(epochs):
            perm = rng.permutation(n)
            for start in range(0, n, cfg.batch_size):
                xb = x[:, perm[start:start + cfg.batch_size]]
                hidden = _sigmoid(np.matmul(xb, self.w1) + self.b1)
                y = _sigmoid(np.matmul(hidden, self.w2) + self.b2)
                dz2 = (y - xb) * mask * y * (1.0 - y) / xb.shape[1]
                dh = np.einsum("knm,khm->knh", dz2, self.w2)
                dz1 = dh * hidden * (1.0 - hidden)
                grads = [np.einsum("knm,knh->kmh", xb, dz1), dz1.sum(axis=1, keepdims=True),
                         np.einsum("knh,knm->khm", hidden, dz2), dz2.sum(axis=1, keepdims=True)]
                step += 1
                for p, g, a, b in zip(params, grads, m1, m2, strict=True):
                    a *= beta1
                    a += (1 - beta1) * g
                    b *= beta2
                    b += (1 - beta2) * g * g
                    p -= cfg.learning_rate * (a / (1 - beta1**step)) / (np.sqrt(b / (1 - beta2**step)) + eps)


class AutoencoderEnsemble:
    """KitNET-style anomaly scorer: fit on benign rows, then score any rows.

    Args:
        config: Training settings.
    """

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        self.config = config or AutoencoderConfig()
        # A flag, not the module, so an ensemble can be copied and pickled.
        self._compiled = self.config.compiled is not False and _scoring_kernel() is not None
        if self.config.compiled and not self._compiled:
            raise ConfigError("the compiled scoring pass needs numba (pip install iotguard[accel])",
                              code="detection_config_invalid")
        self.subsets: list[list[int]] = []
        self._fitted = False

    @property
    def compiled(self) -> bool:
        """Whether :meth:`score` runs the compiled pass."""
        return self._compiled

    def _pack(self, x: FloatArray) -> FloatArray:
        scaled = (x - self._lo) / self._span
        out: FloatArray = scaled[:, self._index].transpose(1, 0, 2) * self._mask
        return out

    def fit(self, x: FloatArray) -> AutoencoderEnsemble:
        """Learn the benign behaviour of the rows of ``x`` ``(n, features)``.

        Raises:
            ConfigError: ``detection_too_few_rows`` with fewer than 8 rows.
        """
        if x.ndim != 2 or x.shape[0] < 8 or not np.isfinite(x).all():
            raise ConfigError("need at least 8 finite training rows", code="detection_too_few_rows")
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        if x.shape[0] > cfg.max_rows:
            x = x[np.sort(rng.choice(x.shape[0], cfg.max_rows, replace=False))]
        self._lo = x.min(axis=0)
        span = x.max(axis=0) - self._lo
        self._span = np.where(span > 0, span, 1.0)
        self.subsets = feature_subsets((x - self._lo) / self._span, cfg.max_subset)
        m = max(len(s) for s in self.subsets)
        self._index = np.array([s + [s[0]] * (m - len(s)) for s in self.subsets])
        self._mask = np.array([[1.0] * len(s) + [0.0] * (m - len(s)) for s in self.subsets])[:, None, :]
        k = len(self.subsets)
        self._ensemble = _Layer(k, m, max(1, math.ceil(cfg.hidden_ratio * m)), rng)
        packed = self._pack(x)
        self._ensemble.fit(packed, self._mask, cfg, rng)
        errors = self._ensemble.rmse(packed, self._mask).T
        self._err_lo = errors.min(axis=0)
        err_span = errors.max(axis=0) - self._err_lo
        self._err_span = np.where(err_span > 0, err_span, 1.0)
        self._out_mask = np.ones((1, 1, k))
        self._output = _Layer(1, k, max(1, math.ceil(cfg.hidden_ratio * k)), rng)
        self._output.fit(self._errors_in(errors), self._out_mask, cfg, rng)
        self._fold(x.shape[1])
        self._fitted = True
        return self

    def _fold(self, n_features: int) -> None:
        """Block-diagonal float32 form of the trained ensemble (see the module docstring).

        With ``sigmoid(z) = (1 + tanh(z / 2)) / 2`` every layer is
        ``tanh(u @ A + c)`` on the previous layer's ``tanh`` output ``u``:
        the halves and the ``+ 1/2`` of the sigmoid go into ``A`` and ``c``.
        """
        h = self._ensemble.w1.shape[2]
        k = len(self.subsets)
        # Rows and columns are the features themselves (the subsets partition them).
        w1 = np.zeros((n_features, k * h))
        w2 = np.zeros((k * h, n_features))
        b2 = np.zeros(n_features)
        members = np.zeros((n_features, k))
        for j, subset in enumerate(self.subsets):
            size = len(subset)
            w1[subset, j * h:(j + 1) * h] = self._ensemble.w1[j, :size]
            w2[j * h:(j + 1) * h, subset] = self._ensemble.w2[j, :, :size]
            b2[subset] = self._ensemble.b2[j, 0, :size]
            members[subset, j] = 1.0 / size
        inv = 1.0 / self._span
        # Inputs: xs = x * inv - lo * inv (scaled to the training range).
        self._f_inv = inv.astype(np.float32)
        self._f_shift = (-self._lo * inv).astype(np.float32)
        self._f_a1 = (0.5 * w1).astype(np.float32)
        self._f_c1 = (0.5 * self._ensemble.b1.reshape(-1)).astype(np.float32)
        # hidden = (1 + u1) / 2, so hidden @ w2 + b2 = u1 @ (w2 / 2) + (colsum(w2) / 2 + b2); halved again.
        self._f_a2 = (0.25 * w2).astype(np.float32)
        self._f_c2 = (0.25 * w2.sum(axis=0) + 0.5 * b2).astype(np.float32)
        self._f_members = members.astype(np.float32)
        # Output layer on e = (rmse - err_lo) / err_span.
        o = self._output
        self._f_einv = (1.0 / self._err_span).astype(np.float32)
        self._f_eshift = (-self._err_lo / self._err_span).astype(np.float32)
        self._f_o1 = (0.5 * o.w1[0]).astype(np.float32)
        self._f_oc1 = (0.5 * o.b1[0, 0]).astype(np.float32)
        self._f_o2 = (0.25 * o.w2[0]).astype(np.float32)
        self._f_oc2 = (0.25 * o.w2[0].sum(axis=0) + 0.5 * o.b2[0, 0]).astype(np.float32)
        # The compiled pass keeps the blocks apart: per feature, its weights to (and from) its subset's hidden units.
        self._c_order = np.array([f for subset in self.subsets for f in subset], dtype=np.int64)
        self._c_starts = np.cumsum([0] + [len(subset) for subset in self.subsets]).astype(np.int64)
        block = np.empty(n_features, dtype=np.int64)
        for j, subset in enumerate(self.subsets):
            block[subset] = j
        cols = block[:, None] * h + np.arange(h)
        self._c_w1 = np.ascontiguousarray(np.take_along_axis(self._f_a1, cols, axis=1))
        self._c_w2 = np.ascontiguousarray(np.take_along_axis(self._f_a2.T, cols, axis=1))
        self._c_c1 = np.ascontiguousarray(self._f_c1.reshape(k, h))
        self._c_inv_size = np.array([1.0 / len(subset) for subset in self.subsets], dtype=np.float32)
        # The same weights padded to the compiled pass's tiles (ADR 0713), when every autoencoder fits one.
        kernel = _scoring_kernel() if self._compiled else None
        self._c_tiles = None if kernel is None else kernel.tiles(
            self.subsets, self._c_w1, self._c_c1, self._c_w2, self._f_c2, self._f_o1, self._f_oc1, self._f_o2,
            self._f_oc2)

    def arrays(self) -> dict[str, FloatArray]:
        """The trained parameters (float64), for :meth:`from_arrays`: scaling, both layers, the error range.

        Raises:
            ConfigError: ``detection_not_fitted`` before :meth:`fit`.
        """
        if not self._fitted:
            raise ConfigError("autoencoder ensemble used before fit", code="detection_not_fitted")
        e, o = self._ensemble, self._output
        return {"lo": self._lo, "span": self._span, "w1": e.w1, "b1": e.b1, "w2": e.w2, "b2": e.b2,
                "err_lo": self._err_lo, "err_span": self._err_span, "ow1": o.w1, "ob1": o.b1, "ow2": o.w2,
                "ob2": o.b2}

    @classmethod
    def from_arrays(cls, config: AutoencoderConfig, subsets: list[list[int]],
                    arrays: dict[str, FloatArray]) -> AutoencoderEnsemble:
        """An ensemble that scores as the one whose :meth:`arrays` these are.

        The caller checks the shapes (:mod:`iotguard.detection.model_state` does).
        """
        out = cls(config)
        out.subsets = [list(s) for s in subsets]
        m = max(len(s) for s in subsets)
        out._lo, out._span = arrays["lo"], arrays["span"]
        out._index = np.array([s + [s[0]] * (m - len(s)) for s in out.subsets])
        out._mask = np.array([[1.0] * len(s) + [0.0] * (m - len(s)) for s in out.subsets])[:, None, :]
        out._ensemble, out._output = _Layer.__new__(_Layer), _Layer.__new__(_Layer)
        out._ensemble.w1, out._ensemble.b1, out._ensemble.w2, out._ensemble.b2 = (
            arrays["w1"], arrays["b1"], arrays["w2"], arrays["b2"])
        out._output.w1, out._output.b1, out._output.w2, out._output.b2 = (
            arrays["ow1"], arrays["ob1"], arrays["ow2"], arrays["ob2"])
        out._err_lo, out._err_span = arrays["err_lo"], arrays["err_span"]
        out._out_mask = np.ones((1, 1, len(subsets)))
        out._fold(arrays["lo"].shape[0])
        out._fitted = True
        return out

    def _errors_in(self, errors: FloatArray) -> FloatArray:
        out: FloatArray = ((errors - self._err_lo) / self._err_span)[None, :, :]
        return out

    def worst_subset(self, x: FloatArray) -> list[int]:
        """Feature columns of the subset whose reconstruction failed most, for the first row of ``x``.

        Errors are compared after scaling by each subset's training range, so
        the answer says which group of features is furthest from normal.

        Raises:
            ConfigError: ``detection_not_fitted`` before :meth:`fit`.
        """
        if not self._fitted:
            raise ConfigError("autoencoder ensemble used before fit", code="detection_not_fitted")
        errors = self._ensemble.rmse(self._pack(x[:1]), self._mask).T
        return list(self.subsets[int(np.argmax(self._errors_in(errors)[0, 0]))])

    def score(self, x: FloatArray) -> FloatArray:
        """Anomaly score of each row (higher is more anomalous).

        Raises:
            ConfigError: ``detection_not_fitted`` before :meth:`fit`.
        """
        if not self._fitted:
            raise ConfigError("autoencoder ensemble used before fit", code="detection_not_fitted")
        if x.shape[0] == 0:
            return np.zeros(0)
        kernel = _scoring_kernel() if self._compiled else None
        if kernel is not None:
            out = np.empty(x.shape[0])
            rows = np.ascontiguousarray(x, dtype=np.float64)
            t = self._c_tiles
            if t is not None:
                kernel.score_tiled(rows, self._f_inv, self._f_shift, t.order, t.w1, t.c1, t.w2, t.c2,
                                   self._c_inv_size, self._f_einv, self._f_eshift, t.o1, t.oc1, t.o2, t.oc2, out)
            else:
                kernel.score_folded(rows, self._f_inv, self._f_shift, self._c_order, self._c_starts, self._c_w1,
                                    self._c_c1, self._c_w2, self._f_c2, self._c_inv_size, self._f_einv,
                                    self._f_eshift, self._f_o1, self._f_oc1, self._f_o2, self._f_oc2, out)
            return out
        with one_blas_thread():
            return self._score(x)

    def _score(self, x: FloatArray) -> FloatArray:
        xs = x.astype(np.float32)
        xs *= self._f_inv
        xs += self._f_shift
        # (y - xs)^2 per input, summed per subset.
        e = np.sqrt(_squared_residual(xs, self._f_a1, self._f_c1, self._f_a2, self._f_c2) @ self._f_members)
        e *= self._f_einv
        e += self._f_eshift
        v = _squared_residual(e, self._f_o1, self._f_oc1, self._f_o2, self._f_oc2)
        out: FloatArray = np.sqrt(v.mean(axis=1, dtype=np.float64))
        return out

    def score_reference(self, x: FloatArray) -> FloatArray:
        """:meth:`score` computed by the batched per-subset form in float64 (for tests).

        Raises:
            ConfigError: ``detection_not_fitted`` before :meth:`fit`.
        """
        if not self._fitted:
            raise ConfigError("autoencoder ensemble used before fit", code="detection_not_fitted")
        errors = self._ensemble.rmse(self._pack(x), self._mask).T
        out: FloatArray = self._output.rmse(self._errors_in(errors), self._out_mask)[0]
        return out
