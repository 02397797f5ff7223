"""User-level DP-FedAvg: clip each update, add Gaussian noise to the sum, account in Rényi DP.

Mechanism (McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018): every device is included in a round
independently with probability ``q`` (Poisson sampling), clips its model
update to L2 norm ``C`` (:func:`clip`), and the aggregator adds
``N(0, (z C)^2 I)`` to the *sum* of the clipped updates (after secure
aggregation, so the hub never sees one update) and divides by the expected
number of participants ``q N`` (a fixed denominator, so one device changes
the average by at most ``C / (q N)``).

Accounting (:class:`RdpAccountant`) is the Rényi DP of the Poisson-
subsampled Gaussian mechanism at integer orders ``2..256``, the exact
binomial expansion of Mironov, Talwar and Zhang, "Rényi Differential
Privacy of the Sampled Gaussian Mechanism" (arXiv:1908.10530, Sec. 3.3)::

    A_a = sum_{k=0}^{a} C(a, k) (1 - q)^(a - k) q^k exp((k^2 - k) / (2 z^2))
    RDP(a) = log(A_a) / (a - 1)

composed additively over rounds and converted to ``(epsilon, delta)`` with
the bound of Canonne, Kamath and Steinke (arXiv:2004.00010, Prop. 12)::

    epsilon = min_a RDP(a) + log(1 - 1/a) - (log(delta) + log(a)) / (a - 1)

Integer orders only can over-state epsilon slightly against an accountant
that also tries fractional orders, never under-state it. The test checks
these numbers against the published values of Google's ``dp-accounting``
(whose ``attrs<24`` pin conflicts with this project's lock, so it is not a
dependency).

The ledger is one per subject and holds pure-epsilon spends composed by
summation (ADR 0404). A training run is one ``(epsilon, delta)`` release:
round ``r`` charges every enrolled subject ``epsilon(r) - epsilon(r - 1)``
at the run's ``delta`` (the increments add up to exactly the run's
epsilon), all or nothing, before the round's noise is drawn
(:class:`PrivacyCharge`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from iotguard.errors import BudgetExhausted, ConfigError
from iotguard.privacy.ledger import PrivacyLossLedger

__all__ = [
    "ORDERS",
    "DpConfig",
    "PrivacyCharge",
    "RdpAccountant",
    "calibrate_noise",
    "clip",
    "epsilon_from_rdp",
    "sampled_gaussian_rdp",
]

Array = npt.NDArray[np.float64]

#: Rényi orders the accountant evaluates.
ORDERS: tuple[int, ...] = tuple(range(2, 257))
#: Most rounds one accountant composes.
MAX_ROUNDS = 1_000_000


def clip(update: Array, clip_norm: float) -> Array:
    """``update`` scaled down to L2 norm at most ``clip_norm`` (unchanged if already within)."""
    norm = float(np.linalg.norm(update))
    return update if norm <= clip_norm else update * (clip_norm / norm)


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def sampled_gaussian_rdp(q: float, noise_multiplier: float, order: int) -> float:
    """RDP at integer ``order`` of one Poisson-``q``-sampled Gaussian with noise multiplier ``z``.

    Raises:
        ConfigError: ``q`` outside [0, 1], ``z <= 0`` or ``order < 2``.
    """
    if not 0.0 <= q <= 1.0 or not noise_multiplier > 0 or order < 2:
        raise ConfigError("need 0 <= q <= 1, noise multiplier > 0 and integer order >= 2")
    z2 = noise_multiplier * noise_multiplier
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return order / (2.0 * z2)
    log_a = -math.inf
    log_q, log_1mq = math.log(q), math.log1p(-q)
    for k in range(order + 1):
        log_binom = math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
        log_a = _log_add(log_a, log_binom + k * log_q + (order - k) * log_1mq + (k * k - k) / (2.0 * z2))
    return log_a / (order - 1)


def epsilon_from_rdp(orders: Sequence[int], rdp: Sequence[float], delta: float) -> tuple[float, int]:
    """Smallest ``epsilon`` over the orders for ``delta`` (Canonne-Kamath-Steinke), and its order.

    Raises:
        ConfigError: ``delta`` outside (0, 1) or mismatched lengths.
    """
    if not 0.0 < delta < 1.0 or len(orders) != len(rdp) or not orders:
        raise ConfigError("need 0 < delta < 1 and one RDP value per order")
    best, best_order = math.inf, int(orders[0])
    for a, r in zip(orders, rdp, strict=True):
        if r < 0:
            raise ConfigError("negative Rényi divergence")
        eps = r + math.log1p(-1.0 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        if eps < best:
            best, best_order = eps, int(a)
    return max(0.0, best), best_order


class RdpAccountant:
    """Composes rounds of the Poisson-subsampled Gaussian mechanism."""

    def __init__(self, orders: Sequence[int] = ORDERS) -> None:
        if not orders or any(int(a) != a or a < 2 for a in orders):
            raise ConfigError("orders must be integers >= 2")
        self.orders = tuple(int(a) for a in orders)
        self._rdp = [0.0] * len(self.orders)
        self.rounds = 0

    def compose(self, q: float, noise_multiplier: float, rounds: int = 1) -> None:
        """Add ``rounds`` rounds at sampling rate ``q`` and noise multiplier ``z``."""
        if not 0 <= rounds <= MAX_ROUNDS:
            raise ConfigError("rounds out of range")
        for i, a in enumerate(self.orders):
            self._rdp[i] += rounds * sampled_gaussian_rdp(q, noise_multiplier, a)
        self.rounds += rounds

    @property
    def rdp(self) -> tuple[float, ...]:
        """Composed RDP at each of :attr:`orders`."""
        return tuple(self._rdp)

    def epsilon(self, delta: float) -> float:
        """``epsilon`` of everything composed so far at ``delta``."""
        return 0.0 if self.rounds == 0 else epsilon_from_rdp(self.orders, self._rdp, delta)[0]


def run_epsilon(q: float, noise_multiplier: float, rounds: int, delta: float) -> float:
    """``epsilon`` at ``delta`` of ``rounds`` rounds of DP-FedAvg."""
    acc = RdpAccountant()
    acc.compose(q, noise_multiplier, rounds)
    return acc.epsilon(delta)


def calibrate_noise(target_epsilon: float, q: float, rounds: int, delta: float) -> float:
    """Smallest noise multiplier (to 0.1 %) whose run stays within ``target_epsilon``.

    Raises:
        ConfigError: the target is not positive or not reachable below ``z = 1000``.
    """
    if not target_epsilon > 0:
        raise ConfigError("target epsilon must be positive")
    lo, hi = 0.05, 1000.0
    if run_epsilon(q, hi, rounds, delta) > target_epsilon:
        raise ConfigError("target epsilon is not reachable")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if run_epsilon(q, mid, rounds, delta) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class DpConfig:
    """DP-FedAvg parameters of one training run.

    Attributes:
        clip_norm: L2 bound ``C`` of each device's update.
        noise_multiplier: ``z``; the sum's noise has standard deviation ``z C``.
        sampling_rate: ``q``, each device's inclusion probability per round.
        rounds: Planned rounds (the accountant's horizon).
        delta: The run's ``delta``.
    """

    clip_norm: float
    noise_multiplier: float
    sampling_rate: float
    rounds: int
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (self.clip_norm > 0 and self.noise_multiplier > 0 and 0 < self.sampling_rate <= 1
                and 1 <= self.rounds <= MAX_ROUNDS and 0 < self.delta < 1):
            raise ConfigError("DP config needs C > 0, z > 0, 0 < q <= 1, rounds >= 1, 0 < delta < 1")

    @classmethod
    def for_epsilon(cls, epsilon: float, *, clip_norm: float, sampling_rate: float, rounds: int,
                    delta: float = 1e-5) -> DpConfig:
        """The config whose whole run is ``(epsilon, delta)``-DP."""
        z = calibrate_noise(epsilon, sampling_rate, rounds, delta)
        return cls(clip_norm, z, sampling_rate, rounds, delta)

    def epsilon_after(self, rounds: int) -> float:
        """``epsilon`` at :attr:`delta` after ``rounds`` rounds."""
        return run_epsilon(self.sampling_rate, self.noise_multiplier, rounds, self.delta)

    def noise(self, dims: int, rng: np.random.Generator) -> Array:
        """The noise added to one round's sum of clipped updates.

        Drawn in floating point from ``rng`` (NumPy), not by an exact sampler:
        for the simulation and the benchmark only. The hub's secure runs draw
        integer discrete-Gaussian noise on the devices with OpenDP's exact
        sampler (:mod:`iotguard.learn.distributed`, ADR 1301).
        """
        out: Array = rng.normal(0.0, self.noise_multiplier * self.clip_norm, dims)
        return out


class PrivacyCharge:
    """Charges a run's privacy loss to its enrolled subjects in the one ledger.

    Args:
        ledger: The per-subject privacy-loss ledger.
        config: The run's DP parameters.
        purpose: Purpose string recorded with every spend (e.g. ``"learn:<run id>"``).
    """

    def __init__(self, ledger: PrivacyLossLedger, config: DpConfig, purpose: str) -> None:
        self._ledger, self.config, self.purpose = ledger, config, purpose
        self.charged_rounds = 0
        self.charged_epsilon = 0.0

    def eligible(self, subjects: Sequence[str], at: datetime) -> list[str]:
        """Subjects whose remaining budget covers the whole planned run; the others do not participate."""
        total = self.config.epsilon_after(self.config.rounds)
        return sorted(s for s in set(subjects) if self._ledger.remaining(s, at) >= total)

    def charge_round(self, subjects: Sequence[str], at: datetime) -> float:
        """Charge the next round's increment to every enrolled subject, all or nothing; returns it.

        Raises:
            BudgetExhausted: the run has used its planned rounds, or a subject's
                budget cannot take the increment (nothing is spent; the round must not run).
        """
        if self.charged_rounds >= self.config.rounds:
            raise BudgetExhausted(f"the run's {self.config.rounds} planned rounds are spent")
        total = self.config.epsilon_after(self.charged_rounds + 1)
        increment = max(0.0, total - self.charged_epsilon)
        self._ledger.charge_all(subjects, increment, self.purpose, at)
        self.charged_rounds += 1
        self.charged_epsilon = total
        return increment
