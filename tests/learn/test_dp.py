"""DP-FedAvg accounting against published values, and the charge to each subject in the one ledger."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from iotguard.errors import BudgetExhausted, ConfigError
from iotguard.learn.dp import (
    DpConfig,
    PrivacyCharge,
    RdpAccountant,
    calibrate_noise,
    clip,
    epsilon_from_rdp,
    sampled_gaussian_rdp,
)
from iotguard.privacy.ledger import InMemoryLedgerStore, PrivacyLossLedger

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def test_sampled_gaussian_rdp_matches_dp_accounting_published_values() -> None:
    # Google dp-accounting 0.6.0, rdp_privacy_accountant_test.py::test_compute_rdp_poisson_sampled_gaussian
    # (q = 0.01, z = 2.5, 50 compositions) at its integer orders.
    expected = {5: 2.18075656e-03, 50: 2.38460375e-02, 100: 1.67416308e02}
    acc = RdpAccountant(orders=sorted(expected))
    acc.compose(0.01, 2.5, 50)
    assert acc.rdp == pytest.approx([expected[a] for a in sorted(expected)], rel=1e-6)


def test_unsampled_gaussian_rdp_is_alpha_over_two_sigma_squared() -> None:
    # Mironov 2017, Prop. 7: the Gaussian mechanism of sensitivity 1 is (a, a / (2 z^2))-RDP.
    for a in (2, 7, 64):
        assert sampled_gaussian_rdp(1.0, 3.0, a) == pytest.approx(a / 18.0)


def test_conversion_matches_dp_accounting_pure_dp_value() -> None:
    # dp-accounting test_compute_epsilon_delta_pure_dp: constant RDP 1.1 at orders 2..32, delta 1e-5.
    eps, order = epsilon_from_rdp(list(range(2, 33)), [1.1] * 31, 1e-5)
    assert eps == pytest.approx(1.32783806176, rel=1e-9)
    assert order == 32


def test_dp_sgd_mnist_setting_matches_dp_accounting() -> None:
    # The DP-SGD MNIST setting (60,000 examples, batch 256, z = 1.1, 60 epochs, delta 1e-5):
    # dp-accounting 0.6.0's RdpAccountant over orders 2..256 gives 2.5969811785948815.
    acc = RdpAccountant()
    acc.compose(256 / 60000, 1.1, int(60 * 60000 / 256))
    assert acc.epsilon(1e-5) == pytest.approx(2.5969811785948815, rel=1e-6)


def test_integer_orders_never_understate_analytic_gaussian() -> None:
    # z = 4.530877117 is exactly (1, 1e-6)-DP for one Gaussian (Balle & Wang 2018; dp-accounting's test).
    acc = RdpAccountant()
    acc.compose(1.0, 4.530877117, 1)
    assert 1.0 <= acc.epsilon(1e-6) <= 1.05


def test_calibrated_noise_meets_target_epsilon() -> None:
    z = calibrate_noise(3.0, 0.5, 40, 1e-5)
    acc = RdpAccountant()
    acc.compose(0.5, z, 40)
    assert acc.epsilon(1e-5) <= 3.0
    acc2 = RdpAccountant()
    acc2.compose(0.5, z * 0.99, 40)
    assert acc2.epsilon(1e-5) > 3.0 * 0.999


def test_clip_bounds_norm_and_keeps_small_updates() -> None:
    v = np.array([3.0, 4.0])
    assert np.linalg.norm(clip(v, 1.0)) == pytest.approx(1.0)
    assert clip(v, 10.0) is v


def test_bad_dp_config_rejected() -> None:
    with pytest.raises(ConfigError):
        DpConfig(clip_norm=0.0, noise_multiplier=1.0, sampling_rate=0.5, rounds=10)
    with pytest.raises(ConfigError):
        epsilon_from_rdp([2], [0.1], 0.0)


def _ledger(budget: float) -> PrivacyLossLedger:
    return PrivacyLossLedger(InMemoryLedgerStore(), budget, timedelta(days=30))


def test_round_charges_add_up_to_the_run_epsilon_for_every_subject() -> None:
    ledger = _ledger(10.0)
    cfg = DpConfig(clip_norm=1.0, noise_multiplier=2.0, sampling_rate=0.5, rounds=5)
    charge = PrivacyCharge(ledger, cfg, "learn:test")
    subjects = ["alice", "bob", "carol"]
    for _ in range(5):
        charge.charge_round(subjects, NOW)
    total = cfg.epsilon_after(5)
    for s in subjects:
        assert ledger.spent(s, NOW) == pytest.approx(total, abs=1e-5)
    with pytest.raises(BudgetExhausted):  # no rounds past the plan: the accountant's horizon
        charge.charge_round(subjects, NOW)


def test_subject_whose_budget_is_spent_does_not_participate() -> None:
    ledger = _ledger(10.0)
    cfg = DpConfig(clip_norm=1.0, noise_multiplier=2.0, sampling_rate=0.5, rounds=5)
    ledger.charge("bob", 9.9, "earlier release", NOW)
    charge = PrivacyCharge(ledger, cfg, "learn:test")
    assert 0.1 < cfg.epsilon_after(5) < 10.0
    assert charge.eligible(["alice", "bob"], NOW) == ["alice"]


def test_refused_round_charge_spends_nothing() -> None:
    ledger = _ledger(1.0)
    cfg = DpConfig(clip_norm=1.0, noise_multiplier=1.0, sampling_rate=1.0, rounds=50)
    ledger.charge("bob", 0.99, "earlier release", NOW)
    charge = PrivacyCharge(ledger, cfg, "learn:test")
    with pytest.raises(BudgetExhausted):
        charge.charge_round(["alice", "bob"], NOW)
    assert ledger.spent("alice", NOW) == 0.0
    assert ledger.spent("bob", NOW) == pytest.approx(0.99)
    assert charge.charged_rounds == 0
    assert math.isfinite(cfg.epsilon_after(1))
