"""Modelling attack on arbiter PUFs: logistic regression on parity features.

This is the attack that makes raw challenge-response pairs (CRPs) a secret:
an eavesdropper who collects a few thousand CRPs of a plain arbiter PUF
learns a model that predicts its responses almost perfectly (Rührmair et al.,
"Modeling Attacks on Physical Unclonable Functions", CCS 2010). iotguard's
PUF protocols therefore never put a raw response on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotguard.keys.puf.arbiter import parity_features

__all__ = ["ArbiterModel", "logistic_regression_attack"]

Bits = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ArbiterModel:
    """A learnt linear delay model (weights over the parity features)."""

    weights: npt.NDArray[np.float64]

    def predict(self, challenges: Bits) -> Bits:
        """Predicted responses (0/1)."""
        return (parity_features(challenges) @ self.weights > 0).astype(np.uint8)

    def accuracy(self, challenges: Bits, responses: Bits) -> float:
        """Fraction of ``responses`` predicted correctly."""
        return float((self.predict(challenges) == responses).mean())


def logistic_regression_attack(
    challenges: Bits, responses: Bits, *, iterations: int = 25, l2: float = 1e-3
) -> ArbiterModel:
    """Fit logistic regression on the parity features by Newton's method (IRLS).

    Args:
        challenges: Observed challenges ``(n, k)``.
        responses: Observed responses ``(n,)`` (0/1).
        iterations: Newton steps.
        l2: Ridge penalty (keeps separable data finite).
    """
    x = parity_features(challenges)
    y = responses.astype(np.float64)
    w = np.zeros(x.shape[1])
    eye = np.eye(x.shape[1])
    for _ in range(iterations):
        z = np.clip(x @ w, -30.0, 30.0)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * eye
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return ArbiterModel(w)
