"""Local DP mechanisms: the privacy bound of each, and unbiased fleet estimates (10,000 devices)."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest

from iotguard.errors import ConfigError
from iotguard.privacy import (
    BoundedNumeric,
    DuchiMechanism,
    GeneralizedRandomizedResponse,
    HybridMechanism,
    OpenDPLaplace,
    OpenDPRandomizedResponse,
    OptimizedUnaryEncoding,
    PiecewiseMechanism,
    choose_categorical,
    choose_numeric,
)

DEVICES = 10_000
EPSILONS = (0.5, 1.0, 2.0, 4.0)
# |estimate - truth| within Z theoretical standard deviations; the seed makes the
# test deterministic, Z=4 keeps it meaningful (a biased estimator fails it).
Z = 4.0


def _fleet(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(21.0, 4.0, DEVICES), -10.0, 45.0)


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("name", ["duchi", "piecewise", "hybrid", "laplace"])
def test_numeric_mean_unbiased_within_theoretical_ci(name: str, eps: float) -> None:
    x = _fleet(7)
    mech = BoundedNumeric(choose_numeric(eps, name), -10.0, 45.0)
    rng = np.random.default_rng(int(eps * 100) + len(name))
    reports = mech.privatise_many(x, rng)
    sd = math.sqrt(mech.mean_variance(x))
    assert abs(reports.mean() - x.mean()) <= Z * sd


@pytest.mark.parametrize("eps", EPSILONS)
def test_empirical_variance_matches_theory(eps: float) -> None:
    rng = np.random.default_rng(11)
    for mech in (DuchiMechanism(eps), PiecewiseMechanism(eps), HybridMechanism(eps)):
        t = np.full(DEVICES, 0.3)
        y = mech.privatise_many(t, rng)
        assert y.var() == pytest.approx(mech.variance(0.3), rel=0.1)


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("name", ["grr", "oue", "auto"])
def test_categorical_frequencies_unbiased_within_theoretical_ci(name: str, eps: float) -> None:
    k = 6
    truth = np.array([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
    rng = np.random.default_rng(int(eps * 10) + k)
    values = rng.choice(k, size=DEVICES, p=truth)
    f = np.bincount(values, minlength=k) / DEVICES
    mech = choose_categorical(eps, k, name)
    est = mech.estimate(mech.privatise_many(values, rng))
    for v in range(k):
        assert abs(est[v] - f[v]) <= Z * math.sqrt(mech.frequency_variance(f[v], DEVICES))


def test_hybrid_beats_laplace_worst_case_at_every_epsilon() -> None:
    for eps in EPSILONS:
        hm = HybridMechanism(eps)
        worst = max(hm.variance(t) for t in np.linspace(-1, 1, 41))
        assert worst < 8 / eps**2


# -- the privacy guarantees, checked on the exact output distributions ---------------------


NUMERIC = (DuchiMechanism, PiecewiseMechanism, HybridMechanism)


def _exact_ratio_bound(eps: float) -> Fraction:
    return Fraction(math.exp(eps)) * (1 + Fraction(1, 1 << 40))


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("cls", NUMERIC)
def test_exact_output_distributions_ratio_at_most_e_eps(cls: type, eps: float) -> None:
    """Every output has positive probability under every input, and ratios are within e^eps exactly."""
    m = cls(eps)
    support = set(m.support())
    ts = [-1.0, -0.37, 0.0, 0.3, 0.3 + 1e-12, 1.0]
    pmfs = [m.pmf(t) for t in ts]
    bound = _exact_ratio_bound(eps)
    for p in pmfs:
        assert set(p) == support and sum(p.values()) == 1
        assert min(p.values()) > 0
    # per output: its largest mass under any input over its smallest under any other
    assert max(max(p[y] for p in pmfs) / min(p[y] for p in pmfs) for y in support) <= bound


@pytest.mark.parametrize("cls", NUMERIC)
def test_no_output_is_impossible_under_a_neighbouring_input(cls: type) -> None:
    """Issue 14: float samplers returned values that the neighbouring input can never produce.

    Every sampled output (scalar and vector paths) must be one of the fixed
    outputs, each of which the neighbouring input produces with probability
    >= e^-eps times as often.
    """
    eps = 1.0
    m = cls(eps)
    neighbour = m.pmf(-0.9)
    r = random.Random(9)
    scalar = {m.privatise(0.61, r) for _ in range(20_000)}
    vector = set(m.privatise_many(np.full(50_000, 0.61), np.random.default_rng(4)).tolist())
    for y in scalar | vector:
        assert y in neighbour, y
        assert neighbour[y] > 0


def test_piecewise_keeps_the_continuous_mechanisms_variance() -> None:
    """The grid costs almost nothing: variance within 1% of Wang et al.'s closed form."""
    for eps in EPSILONS:
        m = PiecewiseMechanism(eps)
        s = math.exp(eps / 2)
        for t in (0.0, 0.5, 1.0):
            closed = t**2 / (s - 1) + (s + 3) / (3 * (s - 1) ** 2)
            assert m.variance(t) == pytest.approx(closed, rel=0.01)


@pytest.mark.parametrize("eps", EPSILONS)
def test_grr_and_oue_probability_ratios(eps: float) -> None:
    g = GeneralizedRandomizedResponse(eps, 5)
    assert g.p / g.q == pytest.approx(math.exp(eps))
    assert g.p + 4 * g.q == pytest.approx(1.0)
    o = OptimizedUnaryEncoding(eps, 5)
    assert (0.5 * (1 - o.q)) / (o.q * 0.5) == pytest.approx(math.exp(eps))


def test_opendp_mechanisms_privacy_maps_and_outputs() -> None:
    lap = OpenDPLaplace(1.0)
    y = lap.privatise(0.2, random.Random(0))
    assert isinstance(y, float)
    rr = OpenDPRandomizedResponse(1.0, 4)
    assert rr.privatise(2, random.Random(0)) in range(4)


def test_scalar_paths_match_vector_paths_in_mean() -> None:
    r = random.Random(5)
    for mech in (DuchiMechanism(1.0), PiecewiseMechanism(1.0), HybridMechanism(1.0)):
        ys = [mech.privatise(0.4, r) for _ in range(20_000)]
        assert abs(np.mean(ys) - 0.4) <= Z * math.sqrt(mech.variance(0.4) / 20_000)
    g = GeneralizedRandomizedResponse(1.0, 3)
    reports = [g.privatise(1, r) for _ in range(20_000)]
    est = g.estimate(reports)
    assert abs(est[1] - 1.0) <= Z * math.sqrt(g.frequency_variance(1.0, 20_000))


def test_bad_parameters_rejected() -> None:
    with pytest.raises(ConfigError):
        DuchiMechanism(0.0)
    with pytest.raises(ConfigError):
        choose_numeric(1.0, "gaussian")
    with pytest.raises(ConfigError):
        choose_categorical(1.0, 1, "grr")


def test_auto_choice_by_epsilon() -> None:
    assert choose_numeric(0.5).name == "duchi"
    assert choose_numeric(1.0).name == "piecewise"
    assert choose_numeric(4.0).name == "piecewise"
    assert choose_categorical(0.5, 8).name == "oue"
    assert choose_categorical(2.0, 8).name == "grr"
