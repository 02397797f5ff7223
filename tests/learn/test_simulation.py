"""Strategies on a simulated clock: stragglers and dropouts, DP with ledger charges, secure aggregation."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from iotguard.learn.client import LocalTrainingClient, Participant, RoundConfig, Update
from iotguard.learn.compress import Compression, UpdateEncoder
from iotguard.learn.data import Dataset, partition, split_train_test, synthetic_digits
from iotguard.learn.dp import DpConfig, PrivacyCharge
from iotguard.learn.model import Model, accuracy
from iotguard.learn.simulation import DeviceTiming, simulate_fedavg, simulate_fedbuff, straggler_timings
from iotguard.learn.strategy import FedAvg, FedAvgConfig, FedBuff, FedBuffConfig
from iotguard.privacy.ledger import InMemoryLedgerStore, PrivacyLossLedger

FEATURES = 24
MODEL = Model(features=FEATURES, classes=10)


def _task(devices_per_speaker: int = 2) -> tuple[list[Dataset], Dataset]:
    train, test = split_train_test(synthetic_digits(speakers=6, per_class=20, features=FEATURES, seed=1), 0.25, 1)
    return partition(train, devices_per_speaker, seed=1), test


def _participants(parts: list[Dataset]) -> list[Participant]:
    return [Participant(f"dev-{i}", f"subject-{i}", LocalTrainingClient(MODEL, p.x, p.y, seed=i), seed=i)
            for i, p in enumerate(parts)]


def _config(version: int) -> RoundConfig:
    return RoundConfig(version, {"epochs": 2, "batch_size": 16, "lr": 0.05})


def test_fedbuff_keeps_improving_while_fedavg_waits_for_stragglers_and_leavers() -> None:
    parts, test = _task()
    n = len(parts)
    # A third of the devices are ten times slower; half of those leave the fleet at t = 30 s.
    timings = straggler_timings(n, straggler_fraction=1 / 3, slowdown=10.0, leave_fraction=1 / 6, leave_at_s=30.0)

    def evaluate(params: list[np.ndarray]) -> float:
        return accuracy(MODEL, params, test.x, test.y)

    fedavg = FedAvg(MODEL, MODEL.initial(0), FedAvgConfig(min_participants=n))
    sync = simulate_fedavg(fedavg, _participants(parts), timings, evaluate, round_config=_config,
                           time_budget_s=120.0, max_rounds=50)
    fedbuff = FedBuff(MODEL, MODEL.initial(0), FedBuffConfig(buffer_size=3))
    asyn = simulate_fedbuff(fedbuff, _participants(parts), timings, evaluate, round_config=_config,
                            time_budget_s=120.0, max_updates=5000)
    # FedAvg waits for every selected device: slow rounds, then a round that never closes.
    assert sync.stalled
    assert sync.points[-1][0] < 40.0
    # FedBuff goes on stepping after the leavers are gone, and ends better.
    assert asyn.points[-1][0] > 100.0
    assert asyn.final_accuracy() > sync.final_accuracy()
    assert asyn.accuracy_at(120.0) >= 0.85
    # ... and reaches 0.8 in well under half of FedAvg's time.
    t_sync, t_async = sync.time_to(0.8), asyn.time_to(0.8)
    assert t_async is not None and (t_sync is None or t_async * 2 <= t_sync)


def test_fedavg_deadline_closes_rounds_without_stragglers_and_fails_below_minimum() -> None:
    parts, test = _task()
    n = len(parts)
    timings = [DeviceTiming(1.0 if i % 2 else 50.0) for i in range(n)]
    ok = FedAvg(MODEL, MODEL.initial(0), FedAvgConfig(min_participants=n // 2, deadline_s=5.0))
    trace = simulate_fedavg(ok, _participants(parts), timings, lambda p: accuracy(MODEL, p, test.x, test.y),
                            round_config=_config, time_budget_s=50.0, max_rounds=5)
    assert [round(t) for t, _, _ in trace.points] == [5, 10, 15, 20, 25]
    strict = FedAvg(MODEL, MODEL.initial(0), FedAvgConfig(min_participants=n // 2 + 1, deadline_s=5.0))
    failed = simulate_fedavg(strict, _participants(parts), timings, lambda p: 0.0, round_config=_config,
                             time_budget_s=50.0, max_rounds=3)
    assert failed.rounds_failed == 3 and not failed.points and strict.version == 0


def test_fedbuff_weights_stale_updates_down_and_rejects_too_stale() -> None:
    dims = MODEL.size()
    buff = FedBuff(MODEL, MODEL.initial(0), FedBuffConfig(buffer_size=1, max_staleness=2))

    def update(version: int) -> Update:
        vec = np.ones(dims)
        return Update("d", "s", version, UpdateEncoder(dims).encode(vec, Compression()), vec, 1)

    assert buff.receive(update(0)).applied
    assert np.allclose(buff.parameters[1], 1.0)
    buff.receive(update(0))  # one version stale: weight 1/sqrt(2)
    assert np.allclose(buff.parameters[1], 1.0 + 1 / math.sqrt(2))
    assert buff.receive(update(0)).applied  # tau = 2 still accepted
    outcome = buff.receive(update(0))  # tau = 3
    assert not outcome.applied and outcome.rejected == (("d", "update_stale"),)


def test_dp_fedavg_through_secure_aggregation_charges_every_subject() -> None:
    parts, test = _task()
    n = len(parts)
    ledger = PrivacyLossLedger(InMemoryLedgerStore(), 8.0, timedelta(days=30))
    subjects = [f"subject-{i}" for i in range(n)]
    ledger_at = datetime(2026, 1, 1, tzinfo=UTC)
    ledger.charge("subject-0", 7.9, "earlier release", ledger_at)
    dp = DpConfig.for_epsilon(3.0, clip_norm=1.0, sampling_rate=1.0, rounds=5)
    charge = PrivacyCharge(ledger, dp, "learn:test")
    eligible = charge.eligible(subjects, ledger_at)
    assert "subject-0" not in eligible and len(eligible) == n - 1
    keep = [i for i in range(n) if f"subject-{i}" in eligible]
    participants = [p for i, p in enumerate(_participants(parts)) if i in keep]
    fed = FedAvg(MODEL, MODEL.initial(0), FedAvgConfig(min_participants=2, secure=True, dp=dp), population=len(keep))
    trace = simulate_fedavg(
        fed, participants, [DeviceTiming(1.0)] * len(keep), lambda p: accuracy(MODEL, p, test.x, test.y),
        round_config=lambda v: RoundConfig(v, {"epochs": 2, "batch_size": 16, "lr": 0.05}, clip_norm=1.0),
        time_budget_s=100.0, max_rounds=10, sampling_rate=1.0, charge=charge, start=ledger_at)
    assert len(trace.points) == 5  # the run's planned rounds, then the charge is refused
    assert trace.privacy_spent == pytest.approx(dp.epsilon_after(5), abs=1e-5)
    assert dp.epsilon_after(5) <= 3.0
    for s in eligible:
        assert ledger.spent(s, ledger_at) == pytest.approx(dp.epsilon_after(5), abs=1e-5)
    assert ledger.spent("subject-0", ledger_at) == pytest.approx(7.9)
    assert trace.final_accuracy() > 0.15  # eleven subjects at epsilon 3: noisy, but above chance (0.1)


def test_secure_fedavg_matches_plain_equal_weight_average() -> None:
    parts, _test = _task()
    timings = [DeviceTiming(1.0)] * len(parts)
    equal = [Dataset(p.x[:20], p.y[:20], p.group[:20]) for p in parts]  # equal counts: both rules agree

    def run(secure: bool) -> list[np.ndarray]:
        fed = FedAvg(MODEL, MODEL.initial(0), FedAvgConfig(min_participants=2, secure=secure))
        simulate_fedavg(fed, _participants(equal), timings, lambda p: 0.0, round_config=_config,
                        time_budget_s=10.0, max_rounds=3)
        return fed.parameters

    for a, b in zip(run(True), run(False), strict=True):
        assert np.allclose(a, b, atol=1e-4)
