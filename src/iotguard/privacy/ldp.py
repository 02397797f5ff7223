"""Local differential privacy mechanisms and their unbiased estimators.

Each mechanism runs on the device, on one value, before the value leaves it.
A randomised algorithm ``M`` is *epsilon-locally differentially private*
(epsilon-LDP) when for every pair of inputs ``x, x'`` and every output set
``S``: ``Pr[M(x) in S] <= e^epsilon * Pr[M(x') in S]``. For mechanisms with
a density (or mass function) ``f(y | x)`` it suffices to show
``f(y | x) / f(y | x') <= e^epsilon`` for all ``x, x', y``; each class below
proves that bound in its docstring.

Numeric mechanisms work on ``t`` in ``[-1, 1]``; :class:`BoundedNumeric`
maps a field's declared ``[lo, hi]`` there (clamping first, which is
post-processing-free pre-processing: the mechanism's guarantee holds for
every input in the domain). Every numeric report is an *unbiased* estimate
of the true value, so the fleet mean is the plain average of reports.

Randomness: each mechanism draws from a :class:`UniformSource` (``random()``
and ``randrange(n)``, e.g. :class:`secrets.SystemRandom`). On devices the pipeline uses
:class:`secrets.SystemRandom` (the OS CSPRNG), because an observer who could
predict a non-cryptographic generator could subtract the noise. The
vectorised ``*_many`` methods take a seeded ``numpy.random.Generator`` and
exist for simulation, tests and benchmarks only. Continuous samplers over
floats leak through their low-order bits (Mironov 2012), so the numeric
mechanisms (Duchi, piecewise, hybrid) are discretised with exact integer
coins (:mod:`iotguard.privacy.ldp_exact` gives the construction and the
proof); :class:`OpenDPLaplace` and :class:`OpenDPRandomizedResponse` use
OpenDP's exact samplers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError
from iotguard.privacy.ldp_exact import (
    HYBRID_THRESHOLD,
    DuchiMechanism,
    HybridMechanism,
    PiecewiseMechanism,
    UniformSource,
    check_epsilon,
)

__all__ = [
    "HYBRID_THRESHOLD",
    "BoundedNumeric",
    "CategoricalMechanism",
    "DuchiMechanism",
    "GeneralizedRandomizedResponse",
    "HybridMechanism",
    "NumericMechanism",
    "OpenDPLaplace",
    "OpenDPRandomizedResponse",
    "OptimizedUnaryEncoding",
    "PiecewiseMechanism",
    "UniformSource",
    "choose_categorical",
    "choose_numeric",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _privacy_map(measurement: Any, d_in: float) -> float:
    """The epsilon OpenDP's privacy map assigns to input distance ``d_in``."""
    result: Any = measurement.map(d_in)
    return float(result)


_check_epsilon = check_epsilon


class NumericMechanism(Protocol):
    """An epsilon-LDP mechanism on ``t`` in ``[-1, 1]`` with unbiased output."""

    name: str
    epsilon: float

    def privatise(self, t: float, rng: UniformSource) -> float:
        """One unbiased private report of ``t``."""
        ...

    def privatise_many(self, t: FloatArray, rng: np.random.Generator) -> FloatArray:
        """Vectorised :meth:`privatise` (simulation only)."""
        ...

    def variance(self, t: float) -> float:
        """Variance of one report given the true ``t``."""
        ...


class OpenDPLaplace:
    """OpenDP's Laplace mechanism as a local mechanism on ``t`` in ``[-1, 1]``.

    The input domain has sensitivity 2 (any two inputs differ by at most 2),
    so noise of scale ``b = 2/eps`` gives ``f(y|t)/f(y|t') =
    exp((|y - t'| - |y - t|)/b) <= exp(|t - t'|/b) <= e^eps``. OpenDP samples
    the noise exactly (no floating-point leak) and the privacy map of the
    built measurement is checked at construction to be at most ``eps``.
    ``Var[y] = 2 b^2 = 8/eps^2``.
    """

    name = "laplace"

    def __init__(self, epsilon: float) -> None:
        import opendp.prelude as dp

        dp.enable_features("contrib")
        self.epsilon = _check_epsilon(epsilon)
        scale = 2.0 / self.epsilon
        self._scale = scale
        self._atom: Any = dp.m.make_laplace(
            dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=scale
        )
        self._vec: Any = dp.m.make_laplace(
            dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float), scale=scale
        )
        spent = _privacy_map(self._atom, 2.0)
        if spent > self.epsilon * (1 + 1e-9):
            raise ConfigError(f"OpenDP Laplace map gives epsilon {spent}, above {self.epsilon}")

    def privatise(self, t: float, rng: UniformSource) -> float:
        del rng  # OpenDP draws from its own CSPRNG.
        return float(self._atom(min(1.0, max(-1.0, float(t)))))

    def privatise_many(self, t: FloatArray, rng: np.random.Generator) -> FloatArray:
        # One independent noise draw per element, i.e. per device.
        del rng
        clipped = [float(x) for x in np.clip(t, -1.0, 1.0)]
        return np.asarray(self._vec(clipped), dtype=np.float64)

    def variance(self, t: float) -> float:
        return 2 * self._scale**2


def _average_variance(mechanism: NumericMechanism) -> float:
    """Variance of one report averaged over inputs uniform on [-1, 1]."""
    ts = np.linspace(-1.0, 1.0, 101)
    return float(np.mean([mechanism.variance(float(t)) for t in ts]))


def choose_numeric(epsilon: float, mechanism: str = "auto") -> NumericMechanism:
    """Build a numeric mechanism by name; ``"auto"`` picks by epsilon.

    ``auto`` takes whichever of Duchi and piecewise has the lower variance
    averaged over the input domain: Duchi below about ``eps = 0.9``, piecewise
    above (both are unbiased, so the lower variance is the lower MSE of a fleet
    mean). ``hybrid`` instead minimises the worst case over inputs. All of
    them beat Laplace's ``8/eps^2`` at every epsilon.

    Raises:
        ConfigError: unknown mechanism or bad epsilon.
    """
    if mechanism == "auto":
        duchi, pm = DuchiMechanism(epsilon), PiecewiseMechanism(epsilon)
        return duchi if _average_variance(duchi) <= _average_variance(pm) else pm
    if mechanism == "hybrid":
        return HybridMechanism(epsilon)
    if mechanism == "duchi":
        return DuchiMechanism(epsilon)
    if mechanism == "piecewise":
        return PiecewiseMechanism(epsilon)
    if mechanism == "laplace":
        return OpenDPLaplace(epsilon)
    raise ConfigError(f"unknown numeric LDP mechanism {mechanism!r}")


@dataclass(frozen=True)
class BoundedNumeric:
    """A numeric mechanism applied to a value declared in ``[lo, hi]``.

    Reports are in the value's own units and unbiased: ``E[report] = clamp(x)``.
    """

    mechanism: NumericMechanism
    lo: float
    hi: float

    def _to_t(self, x: float) -> float:
        x = min(self.hi, max(self.lo, x))
        return 2 * (x - self.lo) / (self.hi - self.lo) - 1

    def _from_t(self, t: float) -> float:
        return self.lo + (t + 1) * (self.hi - self.lo) / 2

    def privatise(self, x: float, rng: UniformSource) -> float:
        """One unbiased private report of ``x`` (in ``x``'s units)."""
        return self._from_t(self.mechanism.privatise(self._to_t(float(x)), rng))

    def privatise_many(self, x: FloatArray, rng: np.random.Generator) -> FloatArray:
        """Vectorised :meth:`privatise` (simulation only)."""
        t = 2 * (np.clip(x, self.lo, self.hi) - self.lo) / (self.hi - self.lo) - 1
        return self.lo + (self.mechanism.privatise_many(t, rng) + 1) * (self.hi - self.lo) / 2

    def mean_variance(self, x: FloatArray) -> float:
        """Variance of the fleet mean of reports of the values ``x``."""
        scale = ((self.hi - self.lo) / 2) ** 2
        t = 2 * (np.clip(x, self.lo, self.hi) - self.lo) / (self.hi - self.lo) - 1
        return float(sum(self.mechanism.variance(float(v)) for v in t) * scale / len(x) ** 2)


# -- categorical ---------------------------------------------------------------


class CategoricalMechanism(Protocol):
    """An eps-LDP mechanism on one of ``k`` categories (indices ``0..k-1``)."""

    name: str
    epsilon: float
    k: int

    def privatise(self, v: int, rng: UniformSource) -> int:
        """One private report of category index ``v`` (encoding is mechanism-specific)."""
        ...

    def privatise_many(self, v: IntArray, rng: np.random.Generator) -> IntArray:
        """Vectorised :meth:`privatise` (simulation only)."""
        ...

    def estimate(self, reports: Sequence[int] | IntArray) -> FloatArray:
        """Unbiased estimates of the frequency of each category."""
        ...

    def frequency_variance(self, f: float, n: int) -> float:
        """Variance of one frequency estimate with true frequency ``f`` over ``n`` reports."""
        ...


class GeneralizedRandomizedResponse:
    """k-ary randomized response (Warner 1965; Kairouz et al. 2016).

    Report the true category with probability ``p = e^eps/(e^eps + k - 1)``,
    otherwise one of the other ``k - 1`` uniformly, each with ``q = 1/(e^eps + k - 1)``.
    For ``k = 2`` this is classic randomized response.

    Privacy: any output has probability ``p`` or ``q`` under any input, and
    ``p / q = e^eps``: eps-LDP.

    Estimator: with ``c_v`` reports of ``v`` among ``n``,
    ``f_v = (c_v/n - q)/(p - q)`` is unbiased, with variance
    ``(q(1-q) + f_v (p(1-p) - q(1-q))) / (n (p - q)^2)``.
    """

    name = "grr"

    def __init__(self, epsilon: float, k: int) -> None:
        self.epsilon = _check_epsilon(epsilon)
        if k < 2:
            raise ConfigError("randomized response needs at least 2 categories")
        self.k = k
        e = math.exp(self.epsilon)
        self.p = e / (e + k - 1)
        self.q = 1 / (e + k - 1)

    def privatise(self, v: int, rng: UniformSource) -> int:
        if rng.random() < self.p:
            return v
        other = min(int(rng.random() * (self.k - 1)), self.k - 2)
        return other if other < v else other + 1

    def privatise_many(self, v: IntArray, rng: np.random.Generator) -> IntArray:
        keep = rng.random(v.shape) < self.p
        other = rng.integers(0, self.k - 1, size=v.shape)
        other = np.where(other < v, other, other + 1)
        return np.where(keep, v, other).astype(np.int64)

    def estimate(self, reports: Sequence[int] | IntArray) -> FloatArray:
        r = np.asarray(reports, dtype=np.int64)
        counts = np.bincount(r, minlength=self.k)[: self.k].astype(np.float64)
        return (counts / len(r) - self.q) / (self.p - self.q)

    def frequency_variance(self, f: float, n: int) -> float:
        p, q = self.p, self.q
        return (q * (1 - q) + f * (p * (1 - p) - q * (1 - q))) / (n * (p - q) ** 2)


class OptimizedUnaryEncoding:
    """Optimised unary encoding (Wang et al., USENIX Security 2017).

    The value is one-hot encoded over ``k`` bits; the true bit is reported as
    1 with probability ``1/2``, every other bit as 1 with ``q = 1/(e^eps + 1)``,
    independently. The report is the bit mask as an integer.

    Privacy: two inputs ``v != v'`` differ only in the distribution of bits
    ``v`` and ``v'``. For any report ``B`` the ratio is
    ``[Pr(B_v|1) Pr(B_v'|0)] / [Pr(B_v|0) Pr(B_v'|1)]``, maximised at
    ``B_v = 1, B_v' = 0``: ``(1/2)(1-q) / (q (1/2)) = (1-q)/q = e^eps``: eps-LDP.

    Estimator: with ``c_v`` reports having bit ``v`` set,
    ``f_v = (c_v/n - q)/(1/2 - q)`` is unbiased, variance
    ``(q(1-q) + f_v (1/4 - q(1-q))) / (n (1/2 - q)^2)``. OUE beats k-RR when
    ``k > 3 e^eps + 2``.
    """

    name = "oue"

    def __init__(self, epsilon: float, k: int) -> None:
        self.epsilon = _check_epsilon(epsilon)
        if not 2 <= k <= 63:
            raise ConfigError("unary encoding supports 2 to 63 categories")
        self.k = k
        self.q = 1 / (math.exp(self.epsilon) + 1)

    def privatise(self, v: int, rng: UniformSource) -> int:
        mask = 0
        for i in range(self.k):
            if rng.random() < (0.5 if i == v else self.q):
                mask |= 1 << i
        return mask

    def privatise_many(self, v: IntArray, rng: np.random.Generator) -> IntArray:
        u = rng.random((len(v), self.k))
        probs = np.full((len(v), self.k), self.q)
        probs[np.arange(len(v)), v] = 0.5
        bits = (u < probs).astype(np.int64)
        masks: IntArray = (bits << np.arange(self.k, dtype=np.int64)).sum(axis=1)
        return masks

    def estimate(self, reports: Sequence[int] | IntArray) -> FloatArray:
        r = np.asarray(reports, dtype=np.int64)
        counts = np.array([((r >> i) & 1).sum() for i in range(self.k)], dtype=np.float64)
        return (counts / len(r) - self.q) / (0.5 - self.q)

    def frequency_variance(self, f: float, n: int) -> float:
        q = self.q
        return (q * (1 - q) + f * (0.25 - q * (1 - q))) / (n * (0.5 - q) ** 2)


class OpenDPRandomizedResponse(GeneralizedRandomizedResponse):
    """k-ary randomized response sampled by OpenDP (``make_randomized_response``).

    Same distribution and estimator as :class:`GeneralizedRandomizedResponse`
    (so the same proof holds); OpenDP's privacy map is checked at
    construction to be at most ``eps``.
    """

    name = "opendp_rr"

    def __init__(self, epsilon: float, k: int) -> None:
        import opendp.prelude as dp

        dp.enable_features("contrib")
        super().__init__(epsilon, k)
        self._meas: Any = dp.m.make_randomized_response(list(range(k)), self.p, T=int)
        spent = _privacy_map(self._meas, 1)
        if spent > self.epsilon * (1 + 1e-9):
            raise ConfigError(f"OpenDP randomized response map gives epsilon {spent}, above {self.epsilon}")

    def privatise(self, v: int, rng: UniformSource) -> int:
        del rng  # OpenDP draws from its own CSPRNG.
        return int(self._meas(int(v)))

    def privatise_many(self, v: IntArray, rng: np.random.Generator) -> IntArray:
        del rng
        out: IntArray = np.fromiter((self._meas(int(x)) for x in v), dtype=np.int64, count=len(v))
        return out


def choose_categorical(epsilon: float, k: int, mechanism: str = "auto") -> CategoricalMechanism:
    """Build a categorical mechanism by name; ``"auto"`` picks by epsilon and k.

    ``auto``: k-ary randomized response when ``k < 3 e^eps + 2`` (its variance
    is lower there), optimised unary encoding otherwise (Wang et al. 2017).

    Raises:
        ConfigError: unknown mechanism, bad epsilon or k.
    """
    if mechanism == "auto":
        mechanism = "grr" if k < 3 * math.exp(epsilon) + 2 else "oue"
    if mechanism == "grr":
        return GeneralizedRandomizedResponse(epsilon, k)
    if mechanism == "oue":
        return OptimizedUnaryEncoding(epsilon, k)
    if mechanism == "opendp_rr":
        return OpenDPRandomizedResponse(epsilon, k)
    raise ConfigError(f"unknown categorical LDP mechanism {mechanism!r}")
