"""Simulated arbiter and XOR-arbiter PUFs (additive delay model).

An arbiter PUF races two signals through ``k`` switch stages; challenge bit
``c_j`` decides whether stage ``j`` crosses the paths. In the additive delay
model (Lim et al., Gassend et al.) the delay difference at the arbiter is
linear in the *parity features* of the challenge::

    phi_j(c) = prod_{i=j}^{k-1} (1 - 2 c_i)   for j < k,   phi_k = 1
    delta(c) = w . phi(c) + noise,             r(c) = [delta(c) > 0]

with per-device stage weights ``w ~ N(0, 1)``. Linearity is exactly why a
plain arbiter PUF is learnable from challenge-response pairs (see
:mod:`iotguard.keys.puf.modelling`). An XOR-arbiter PUF XORs ``l``
independent chains, which makes the response a degree-``l`` function of the
features: harder to learn, but not impossible with enough pairs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["ArbiterPuf", "XorArbiterPuf", "parity_features", "random_challenges"]

Bits = npt.NDArray[np.uint8]
Features = npt.NDArray[np.float64]


def random_challenges(count: int, stages: int, rng: np.random.Generator) -> Bits:
    """``count`` uniformly random challenges of ``stages`` bits (values 0/1)."""
    return rng.integers(0, 2, size=(count, stages), dtype=np.uint8)


def parity_features(challenges: Bits) -> Features:
    """Map challenges ``(n, k)`` to the additive-model features ``(n, k + 1)``."""
    signs = 1.0 - 2.0 * challenges.astype(np.float64)
    phi = np.cumprod(signs[:, ::-1], axis=1)[:, ::-1]
    return np.hstack([phi, np.ones((challenges.shape[0], 1))])


class ArbiterPuf:
    """A single arbiter chain.

    Args:
        stages: Number of switch stages ``k``.
        noise_sigma: Per-evaluation noise on the delay difference, relative
            to the stage-delay spread (0.05 gives about 2 % unstable responses).
        seed: Manufacturing seed.
    """

    def __init__(self, stages: int = 64, *, noise_sigma: float = 0.05, seed: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.stages = stages
        self._weights = rng.standard_normal(stages + 1)
        self._noise = noise_sigma * float(np.sqrt(stages + 1))
        self._rng = np.random.default_rng(None if seed is None else seed + 1)

    def __repr__(self) -> str:
        return f"ArbiterPuf(stages={self.stages})"

    def delay_difference(self, challenges: Bits, *, noisy: bool = True) -> npt.NDArray[np.float64]:
        """Delay difference at the arbiter for each challenge."""
        delta: npt.NDArray[np.float64] = parity_features(challenges) @ self._weights
        if noisy:
            delta = delta + self._rng.normal(0.0, self._noise, delta.shape)
        return delta

    def evaluate(self, challenges: Bits, *, noisy: bool = True) -> Bits:
        """Responses (0/1) to ``challenges`` of shape ``(n, stages)``."""
        return (self.delay_difference(challenges, noisy=noisy) > 0).astype(np.uint8)


class XorArbiterPuf:
    """``chains`` arbiter chains fed the same challenge, responses XORed.

    Args:
        chains: Number of chains ``l`` (2-6 are common).
        stages: Stages per chain.
        noise_sigma: Noise per chain (see :class:`ArbiterPuf`).
        seed: Manufacturing seed.
    """

    def __init__(
        self, chains: int = 4, stages: int = 64, *, noise_sigma: float = 0.05, seed: int | None = None
    ) -> None:
        base = int(np.random.default_rng(seed).integers(0, 2**62))
        self.chains = [ArbiterPuf(stages, noise_sigma=noise_sigma, seed=base + 2 * i) for i in range(chains)]
        self.stages = stages

    def __repr__(self) -> str:
        return f"XorArbiterPuf(chains={len(self.chains)}, stages={self.stages})"

    def evaluate(self, challenges: Bits, *, noisy: bool = True) -> Bits:
        """Responses (0/1) to ``challenges`` of shape ``(n, stages)``."""
        out = np.zeros(challenges.shape[0], dtype=np.uint8)
        for chain in self.chains:
            out ^= chain.evaluate(challenges, noisy=noisy)
        return out
