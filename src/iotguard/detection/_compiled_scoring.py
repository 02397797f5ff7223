"""The folded autoencoder ensemble's scoring pass compiled with Numba: an optional accelerator (internal).

:meth:`.autoencoder.AutoencoderEnsemble.score` in its folded float32 form
(ADR 0704) is six dense matrix products over block-diagonal matrices, two
``tanh`` passes and a few elementwise passes, each a NumPy call over the
whole batch. Here the same arithmetic runs as one pass over blocks of 128
rows, the block structure kept: each feature meets only the hidden units of
its own subset (a few hundred multiply-adds per row instead of a few
thousand). No BLAS call is made, so no BLAS thread limit is needed.

:func:`score_tiled` (ADR 0713) is the pass for ensembles whose autoencoders
all fit one tile: at most 8 inputs and 6 hidden units, for every subset and
for the output autoencoder (the default ``max_subset`` of 8 gives subsets of
up to 8 features with 6 hidden units; on the bench's four Zeek logs, 7
subsets and an output autoencoder 7 -> 6 -> 7). The rows of a block are the
vectorised loop. Per row, a subset's inputs, its hidden units and the
running sum of its squared residuals are scalars, so they stay in vector
registers instead of being loaded and stored per multiply-add; the subset's
weights are read into scalars once per block, before the row loop. Subsets
are padded to the tile with zero weights and an input row of ``0.5``: a
padded input adds ``0.5 * 0`` to a hidden unit's sum, a padded hidden unit
is ``tanh(0) = 0`` and a padded output reconstructs ``0.5 - 0.5 = 0``, all
exactly, so each row's operations are those of :func:`score_folded` in the
same order. The ``contract`` flag permits fusing a product into a sum but
does not require it, and LLVM leaves a few of the sums unfused in one pass
that it fuses in the other: the two passes' scores differ by float32
rounding (at most 3.4e-7 relative on the four Zeek logs; tested within
2e-6), not bit for bit.

:func:`score_folded` is the general pass for any subset and hidden size:
every inner loop runs over the rows of a block (so it vectorises), the
running sums kept in a block-sized buffer.

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
from typing import NamedTuple

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["Tiles", "score_folded", "score_tiled", "tiles"]

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
# The tile: inputs and hidden units of one autoencoder in :func:`score_tiled`.
_TILE_IN = 8
_TILE_HIDDEN = 6
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


class Tiles(NamedTuple):
    """An ensemble's folded weights padded to the tile, for :func:`score_tiled`.

    ``order`` (subsets, 8) lists each subset's features, padded with the
    index of the ``0.5`` input row (the feature count); ``w1`` and ``w2``
    (subsets, 8, 6) a subset's weights from its inputs and to its outputs,
    ``c1`` (subsets, 6) and ``c2`` (subsets, 8) their biases; ``o1`` and
    ``o2`` (8, 6), ``oc1`` (6) and ``oc2`` (8) the output autoencoder's the
    same way. Padding is zero.
    """

    order: IntArray
    w1: F32Array
    c1: F32Array
    w2: F32Array
    c2: F32Array
    o1: F32Array
    oc1: F32Array
    o2: F32Array
    oc2: F32Array


def tiles(subsets: list[list[int]], w1: F32Array, c1: F32Array, w2: F32Array, c2: F32Array, o1: F32Array,
          oc1: F32Array, o2: F32Array, oc2: F32Array) -> Tiles | None:
    """The arguments of :func:`score_folded` (``w1``, ``c1``, ``w2``, ``c2``, ``o1`` .. ``oc2``) as tiles.

    ``None`` when a subset has more than 8 features or 6 hidden units, or the
    output autoencoder more than 8 inputs (subsets) or 6 hidden units: such
    an ensemble is scored by :func:`score_folded`.
    """
    k, h = c1.shape
    ho = oc1.shape[0]
    if max(len(s) for s in subsets) > _TILE_IN or h > _TILE_HIDDEN or k > _TILE_IN or ho > _TILE_HIDDEN:
        return None
    order = np.full((k, _TILE_IN), w1.shape[0], dtype=np.int64)
    t_w1 = np.zeros((k, _TILE_IN, _TILE_HIDDEN), dtype=np.float32)
    t_c1 = np.zeros((k, _TILE_HIDDEN), dtype=np.float32)
    t_w2 = np.zeros((k, _TILE_IN, _TILE_HIDDEN), dtype=np.float32)
    t_c2 = np.zeros((k, _TILE_IN), dtype=np.float32)
    for j, subset in enumerate(subsets):
        size = len(subset)
        order[j, :size] = subset
        t_w1[j, :size, :h] = w1[subset]
        t_c1[j, :h] = c1[j]
        t_w2[j, :size, :h] = w2[subset]
        t_c2[j, :size] = c2[subset]
    t_o1 = np.zeros((_TILE_IN, _TILE_HIDDEN), dtype=np.float32)
    t_o1[:k, :ho] = o1
    t_oc1 = np.zeros(_TILE_HIDDEN, dtype=np.float32)
    t_oc1[:ho] = oc1
    t_o2 = np.zeros((_TILE_IN, _TILE_HIDDEN), dtype=np.float32)
    t_o2[:k, :ho] = o2.T
    t_oc2 = np.zeros(_TILE_IN, dtype=np.float32)
    t_oc2[:k] = oc2
    return Tiles(order, t_w1, t_c1, t_w2, t_c2, t_o1, t_oc1, t_o2, t_oc2)


# A tile's weights as tuples (scalars once compiled), read once per block before the row loop.
Inputs = tuple[np.float32, np.float32, np.float32, np.float32, np.float32, np.float32, np.float32, np.float32]
Hidden = tuple[np.float32, np.float32, np.float32, np.float32, np.float32, np.float32]
TileWeights = tuple[tuple[Inputs, ...], Hidden, tuple[Hidden, ...], Inputs]


@numba.njit(cache=False, nogil=True, fastmath=_FAST, error_model="numpy", inline="always")
def _tile(w1: F32Array, c1: F32Array, w2: F32Array, c2: F32Array) -> TileWeights:  # pragma: no cover - compiled
    """Per hidden unit its weights from the 8 inputs; the biases; per output its weights from the 6 hidden units."""
    into = (
        (w1[0, 0], w1[1, 0], w1[2, 0], w1[3, 0], w1[4, 0], w1[5, 0], w1[6, 0], w1[7, 0]),
        (w1[0, 1], w1[1, 1], w1[2, 1], w1[3, 1], w1[4, 1], w1[5, 1], w1[6, 1], w1[7, 1]),
        (w1[0, 2], w1[1, 2], w1[2, 2], w1[3, 2], w1[4, 2], w1[5, 2], w1[6, 2], w1[7, 2]),
        (w1[0, 3], w1[1, 3], w1[2, 3], w1[3, 3], w1[4, 3], w1[5, 3], w1[6, 3], w1[7, 3]),
        (w1[0, 4], w1[1, 4], w1[2, 4], w1[3, 4], w1[4, 4], w1[5, 4], w1[6, 4], w1[7, 4]),
        (w1[0, 5], w1[1, 5], w1[2, 5], w1[3, 5], w1[4, 5], w1[5, 5], w1[6, 5], w1[7, 5]),
    )
    back = (
        (w2[0, 0], w2[0, 1], w2[0, 2], w2[0, 3], w2[0, 4], w2[0, 5]),
        (w2[1, 0], w2[1, 1], w2[1, 2], w2[1, 3], w2[1, 4], w2[1, 5]),
        (w2[2, 0], w2[2, 1], w2[2, 2], w2[2, 3], w2[2, 4], w2[2, 5]),
        (w2[3, 0], w2[3, 1], w2[3, 2], w2[3, 3], w2[3, 4], w2[3, 5]),
        (w2[4, 0], w2[4, 1], w2[4, 2], w2[4, 3], w2[4, 4], w2[4, 5]),
        (w2[5, 0], w2[5, 1], w2[5, 2], w2[5, 3], w2[5, 4], w2[5, 5]),
        (w2[6, 0], w2[6, 1], w2[6, 2], w2[6, 3], w2[6, 4], w2[6, 5]),
        (w2[7, 0], w2[7, 1], w2[7, 2], w2[7, 3], w2[7, 4], w2[7, 5]),
    )
    return (into, (c1[0], c1[1], c1[2], c1[3], c1[4], c1[5]), back,
            (c2[0], c2[1], c2[2], c2[3], c2[4], c2[5], c2[6], c2[7]))


@numba.njit(cache=False, nogil=True, fastmath=_FAST, error_model="numpy", inline="always")
def _dot(bias: np.float32, a: Inputs | Hidden, w: Inputs | Hidden) -> np.float32:  # pragma: no cover - compiled
    """``bias`` plus the products of ``a`` and ``w``, added in order (the loop unrolls: the length is the type's)."""
    acc = bias
    for i in range(len(a)):
        acc += a[i] * w[i]
    return acc


@numba.njit(cache=False, nogil=True, fastmath=_FAST, error_model="numpy", inline="always")
def _residual(err: np.float32, x: np.float32, hidden: Hidden, w: Hidden,
              bias: np.float32) -> np.float32:  # pragma: no cover - compiled
    d = _HALF * _tanh(_dot(bias, hidden, w)) + _HALF - x
    return err + d * d


@numba.njit(cache=False, nogil=True, fastmath=_FAST, error_model="numpy", inline="always")
def _squared_error(x: Inputs, t: TileWeights) -> np.float32:  # pragma: no cover - compiled
    """Sum of one tile autoencoder's squared residuals over its 8 inputs, for one row."""
    into, c1, back, c2 = t
    hidden = (_tanh(_dot(c1[0], x, into[0])), _tanh(_dot(c1[1], x, into[1])), _tanh(_dot(c1[2], x, into[2])),
              _tanh(_dot(c1[3], x, into[3])), _tanh(_dot(c1[4], x, into[4])), _tanh(_dot(c1[5], x, into[5])))
    err = _residual(_ZERO, x[0], hidden, back[0], c2[0])
    err = _residual(err, x[1], hidden, back[1], c2[1])
    err = _residual(err, x[2], hidden, back[2], c2[2])
    err = _residual(err, x[3], hidden, back[3], c2[3])
    err = _residual(err, x[4], hidden, back[4], c2[4])
    err = _residual(err, x[5], hidden, back[5], c2[5])
    err = _residual(err, x[6], hidden, back[6], c2[6])
    return _residual(err, x[7], hidden, back[7], c2[7])


@numba.njit(cache=False, nogil=True, fastmath=_FAST, error_model="numpy")
def score_tiled(x: FloatArray, inv: F32Array, shift: F32Array, order: IntArray, w1: F32Array, c1: F32Array,
                w2: F32Array, c2: F32Array, inv_size: F32Array, einv: F32Array, eshift: F32Array, o1: F32Array,
                oc1: F32Array, o2: F32Array, oc2: F32Array, out: FloatArray) -> None:  # pragma: no cover - compiled
    """Anomaly score of every row of ``x`` into ``out``, each autoencoder one tile (see :class:`Tiles`).

    ``inv``, ``shift``, ``inv_size``, ``einv`` and ``eshift`` are as for
    :func:`score_folded`; the rest are the fields of :class:`Tiles`.
    """
    n, n_features = x.shape
    k = order.shape[0]
    # Scaled inputs, one row per feature and a last row of 0.5 for the padding.
    xs = np.empty((n_features + 1, _ROWS), dtype=np.float32)
    xs[n_features, :] = _HALF
    err = np.empty((_TILE_IN, _ROWS), dtype=np.float32)
    err[:, :] = _HALF
    for r0 in range(0, n, _ROWS):
        m = min(_ROWS, n - r0)
        # Row by row: each row of x is read once, contiguously.
        for r in range(m):
            for f in range(n_features):
                xs[f, r] = np.float32(x[r0 + r, f]) * inv[f] + shift[f]
        for j in range(k):
            t = _tile(w1[j], c1[j], w2[j], c2[j])
            o = order[j]
            f0, f1, f2, f3, f4, f5, f6, f7 = o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]
            s = inv_size[j]
            a = einv[j]
            b = eshift[j]
            for r in range(m):
                v = (xs[f0, r], xs[f1, r], xs[f2, r], xs[f3, r], xs[f4, r], xs[f5, r], xs[f6, r], xs[f7, r])
                err[j, r] = math.sqrt(_squared_error(v, t) * s) * a + b
        t = _tile(o1, oc1, o2, oc2)
        for r in range(m):
            v = (err[0, r], err[1, r], err[2, r], err[3, r], err[4, r], err[5, r], err[6, r], err[7, r])
            out[r0 + r] = math.sqrt(np.float64(_squared_error(v, t)) / k)
