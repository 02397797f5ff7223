"""The folded autoencoder ensemble's scoring pass compiled with Numba: an optional accelerator (internal).

:meth:`.autoencoder.AutoencoderEnsemble.score` in its folded float32 form
(ADR 0704) is six dense matrix products over block-diagonal matrices, two
``tanh`` passes and a few elementwise passes, each a NumPy call over the
whole batch. Here the same arithmetic runs as one pass over blocks of rows,
the block structure kept: each feature meets only the hidden units of its
own subset (a few hundred multiply-adds per row instead of a few thousand),
and every inner loop runs over the rows of a block, so it vectorises. No
BLAS call is made, so no BLAS thread limit is needed.

``tanh`` is a rational function of the clamped input, fitted for this
module: ``x P(x^2) / Q(x^2)`` with degree-4 ``P`` and ``Q`` (weighted least
squares on the absolute error over ``|x| <= 9``; beyond 9, float32 ``tanh``
is 1 to within 3e-8). Its largest absolute error in float32 is about 3.5e-7,
a few float32 units near 1, the order of the folded form's own rounding;
thresholds are computed by the same pass, so calibration is consistent.

Imports Numba (BSD licence); functions compile on their first call.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["score_folded"]

F32Array = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_CLAMP = np.float32(9.0)
_P0 = np.float32(0.9999999427542952)
_P1 = np.float32(0.13388087728849557)
_P2 = np.float32(0.0035041251288787712)
_P3 = np.float32(2.0755095568372565e-05)
_P4 = np.float32(1.3566779533125128e-08)
_Q1 = np.float32(0.46721396033447204)
_Q2 = np.float32(0.0259090809528902)
_Q3 = np.float32(0.0003299839426136893)
_Q4 = np.float32(7.861331143381445e-07)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)
_ROWS = 128
# Contraction into fused multiply-adds and no NaN or infinity checks (the inputs are finite features); no
# reassociation or approximate reciprocals, so each row's arithmetic is the written one. The NumPy error
# model (no ZeroDivisionError branch) lets the row loops vectorise.
_FAST = {"nnan", "ninf", "nsz", "contract"}


@numba.njit(cache=False, nogil=True, fastmath=_FAST, error_model="numpy", inline="always")
def _tanh(x: np.float32) -> np.float32:  # pragma: no cover - compiled
    c = min(max(x, -_CLAMP), _CLAMP)
    t = c * c
    p = (((_P4 * t + _P3) * t + _P2) * t + _P1) * t + _P0
    q = (((_Q4 * t + _Q3) * t + _Q2) * t + _Q1) * t + _ONE
    return c * p / q


@numba.njit(cache=False, nogil=True, fastmath=_FAST, error_model="numpy")
def score_folded(
    x: FloatArray,
    inv: F32Array,
    shift: F32Array,
    order: IntArray,
    starts: IntArray,
    w1: F32Array,
    c1: F32Array,
    w2: F32Array,
    c2: F32Array,
    inv_size: F32Array,
    einv: F32Array,
    eshift: F32Array,
    o1: F32Array,
    oc1: F32Array,
    o2: F32Array,
    oc2: F32Array,
    out: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Anomaly score of every row of ``x`` into ``out``.

    ``order`` lists the features subset by subset, ``starts`` (subsets + 1)
    where each subset begins in it. ``w1`` (features, hidden) holds each
    feature's weights to the hidden units of its own subset, ``c1``
    (subsets, hidden) their biases; ``w2`` (features, hidden) and ``c2``
    (features) map a subset's hidden units back to each of its features.
    ``o1`` (subsets, output hidden), ``oc1``, ``o2`` (output hidden,
    subsets) and ``oc2`` are the output autoencoder's. All are the folded
    weights (scaling and the sigmoids' halves inside).
    """
    n, n_features = x.shape
    k = starts.shape[0] - 1
    h = w1.shape[1]
    ho = o1.shape[1]
    xs = np.empty((n_features, _ROWS), dtype=np.float32)
    hidden = np.empty((h, _ROWS), dtype=np.float32)
    acc = np.empty(_ROWS, dtype=np.float32)
    err = np.empty((k, _ROWS), dtype=np.float32)
    o_hidden = np.empty((ho, _ROWS), dtype=np.float32)
    total = np.empty(_ROWS, dtype=np.float32)
    for r0 in range(0, n, _ROWS):
        m = min(_ROWS, n - r0)
        for f in range(n_features):
            a = inv[f]
            b = shift[f]
            for r in range(m):
                xs[f, r] = np.float32(x[r0 + r, f]) * a + b
        for j in range(k):
            lo = starts[j]
            hi = starts[j + 1]
            for u in range(h):
                bias = c1[j, u]
                for r in range(m):
                    acc[r] = bias
                for q in range(lo, hi):
                    f = order[q]
                    w = w1[f, u]
                    for r in range(m):
                        acc[r] += xs[f, r] * w
                for r in range(m):
                    hidden[u, r] = _tanh(acc[r])
            for r in range(m):
                err[j, r] = _ZERO
            for q in range(lo, hi):
                f = order[q]
                bias = c2[f]
                for r in range(m):
                    acc[r] = bias
                for u in range(h):
                    w = w2[f, u]
                    for r in range(m):
                        acc[r] += hidden[u, r] * w
                for r in range(m):
                    d = _HALF * _tanh(acc[r]) + _HALF - xs[f, r]
                    err[j, r] += d * d
            s = inv_size[j]
            a = einv[j]
            b = eshift[j]
            for r in range(m):
                err[j, r] = math.sqrt(err[j, r] * s) * a + b
        for u in range(ho):
            bias = oc1[u]
            for r in range(m):
                acc[r] = bias
            for j in range(k):
                w = o1[j, u]
                for r in range(m):
                    acc[r] += err[j, r] * w
            for r in range(m):
                o_hidden[u, r] = _tanh(acc[r])
        for r in range(m):
            total[r] = _ZERO
        for j in range(k):
            bias = oc2[j]
            for r in range(m):
                acc[r] = bias
            for u in range(ho):
                w = o2[u, j]
                for r in range(m):
                    acc[r] += o_hidden[u, r] * w
            for r in range(m):
                d = _HALF * _tanh(acc[r]) + _HALF - err[j, r]
                total[r] += d * d
        for r in range(m):
            out[r0 + r] = math.sqrt(np.float64(total[r]) / k)
