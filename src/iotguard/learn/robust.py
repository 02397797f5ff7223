"""Aggregation rules over plaintext updates, and the update norm check.

:func:`weighted_mean` is FedAvg's rule. Against a poisoning device the hub
can instead use :func:`coordinate_median` or :func:`trimmed_mean` (Yin et
al., "Byzantine-Robust Distributed Learning", ICML 2018): with ``f``
malicious updates among ``n`` and ``f < n/2`` (median) or ``f <= trim *
n`` (trimmed mean), every coordinate of the result lies between the
smallest and largest *honest* values of that coordinate, whatever the
malicious devices send. So one scaled malicious update moves the robust
aggregate by at most the spread of the honest updates
(:func:`honest_envelope_bound`), while it moves the mean by ``1/n`` of its
own size.

Robust rules need the individual updates, so they exclude secure
aggregation (ADR 1300); under secure aggregation devices clip on their side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError, MalformedError

__all__ = ["AGGREGATORS", "aggregate", "check_norm", "coordinate_median", "honest_envelope_bound", "trimmed_mean",
           "weighted_mean"]

Array = npt.NDArray[np.float64]
AGGREGATORS = ("mean", "median", "trimmed_mean")


def check_norm(update: Array, max_norm: float) -> None:
    """Raise unless ``update`` is finite and has L2 norm at most ``max_norm``.

    Raises:
        MalformedError: ``update_not_finite`` or ``update_norm_exceeded``.
    """
    if not np.all(np.isfinite(update)):
        raise MalformedError("update is not finite", code="update_not_finite")
    norm = float(np.linalg.norm(update))
    if norm > max_norm:
        raise MalformedError(f"update norm {norm:.4g} exceeds {max_norm:.4g}", code="update_norm_exceeded")


def _stack(updates: Sequence[Array]) -> Array:
    if not updates:
        raise ConfigError("no updates to aggregate")
    return np.vstack(updates)


def weighted_mean(updates: Sequence[Array], weights: Sequence[float]) -> Array:
    """Mean of ``updates`` weighted by ``weights`` (FedAvg: examples per device)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(updates) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError("weights must be non-negative, one per update, not all zero")
    out: Array = (w[:, None] * _stack(updates)).sum(axis=0) / w.sum()
    return out


def coordinate_median(updates: Sequence[Array]) -> Array:
    """Coordinate-wise median."""
    out: Array = np.median(_stack(updates), axis=0)
    return out


def trimmed_mean(updates: Sequence[Array], trim: float) -> Array:
    """Coordinate-wise mean after dropping the ``ceil(trim * n)`` largest and smallest values.

    Raises:
        ConfigError: ``trim`` outside [0, 0.5) or nothing left after trimming.
    """
    x = np.sort(_stack(updates), axis=0)
    n = x.shape[0]
    if not 0.0 <= trim < 0.5:
        raise ConfigError("trim must be in [0, 0.5)")
    cut = int(np.ceil(trim * n))
    if n - 2 * cut < 1:
        raise ConfigError("too few updates to trim")
    out: Array = x[cut:n - cut].mean(axis=0)
    return out


def aggregate(rule: str, updates: Sequence[Array], weights: Sequence[float], trim: float = 0.2) -> Array:
    """Apply the named rule (one of :data:`AGGREGATORS`)."""
    if rule == "mean":
        return weighted_mean(updates, weights)
    if rule == "median":
        return coordinate_median(updates)
    if rule == "trimmed_mean":
        return trimmed_mean(updates, trim)
    raise ConfigError(f"aggregator must be one of {AGGREGATORS}")


def honest_envelope_bound(honest: Sequence[Array], reference: Array) -> float:
    """L2 distance from ``reference`` to the far corner of the honest updates' coordinate-wise box.

    A robust aggregate (median with a malicious minority, or trimmed mean
    trimming at least the malicious count) lies inside that box, so its
    distance to ``reference`` is at most this value.
    """
    x = _stack(honest)
    far = np.maximum(np.abs(x.max(axis=0) - reference), np.abs(x.min(axis=0) - reference))
    return float(np.linalg.norm(far))
