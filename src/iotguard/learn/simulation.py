"""Federated training on a simulated clock: real local training, simulated durations.

Every device really trains (its :class:`~iotguard.learn.client.Participant`
runs ``fit`` on its own data); only *time* is simulated. Each device takes
its :class:`DeviceTiming` ``duration_s`` (times a small random jitter) to
pull the model, train and send; a device may leave the fleet for good at
``leaves_at_s``. This is what lets a test or the benchmark compare
strategies under stragglers reproducibly on a shared two-core machine: the
clock reading is the wall-clock time a fleet with those device speeds
would take, not the time this process spends computing.

* :func:`simulate_fedavg`: each round samples devices (all available, or
  Poisson with rate ``q`` under DP), waits until every selected device
  answered or the deadline passed, then applies the round. A selected
  device that left never answers: with no deadline the round waits forever
  and training stops there (what synchronous FedAvg does when a device is
  lost).
* :func:`simulate_fedbuff`: every device trains continuously; each arriving
  update goes to the buffer and the device immediately pulls the current
  model again.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from iotguard.errors import BudgetExhausted, ConfigError
from iotguard.learn.client import Participant, RoundConfig, Update
from iotguard.learn.dp import PrivacyCharge
from iotguard.learn.model import NDArrays
from iotguard.learn.strategy import FedAvg, FedBuff

__all__ = ["DeviceTiming", "Trace", "simulate_fedavg", "simulate_fedbuff", "straggler_timings"]

Evaluate = Callable[[NDArrays], float]
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DeviceTiming:
    """How long a device takes per local round, and when (if ever) it leaves."""

    duration_s: float
    leaves_at_s: float = math.inf


def straggler_timings(n: int, *, straggler_fraction: float, slowdown: float, leave_fraction: float = 0.0,
                      leave_at_s: float = 0.0, base_s: float = 1.0, seed: int = 0) -> list[DeviceTiming]:
    """``n`` timings: a ``straggler_fraction`` of devices ``slowdown`` times slower, and a
    ``leave_fraction`` (taken from the stragglers first) leaving at ``leave_at_s``."""
    if not (0 <= straggler_fraction <= 1 and 0 <= leave_fraction <= 1 and slowdown >= 1 and base_s > 0):
        raise ConfigError("straggler settings out of range")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    slow = set(order[:round(straggler_fraction * n)].tolist())
    leaving = set(order[:round(leave_fraction * n)].tolist())
    return [DeviceTiming(base_s * (slowdown if i in slow else 1.0) * float(rng.uniform(0.8, 1.2)),
                         leave_at_s if i in leaving else math.inf) for i in range(n)]


@dataclass
class Trace:
    """What a simulated run did.

    Attributes:
        points: ``(simulated seconds, model version, test accuracy)`` after every model step.
        update_bytes: Encoded bytes of every update received, by device.
        rounds_failed: FedAvg rounds that closed with too few answers.
        stalled: The run stopped waiting for a device that will not answer.
        privacy_spent: Epsilon charged to each enrolled subject (DP runs).
        rejected: ``(device, reason)`` of refused updates.
    """

    points: list[tuple[float, int, float]] = field(default_factory=list)
    update_bytes: dict[str, list[int]] = field(default_factory=dict)
    rounds_failed: int = 0
    stalled: bool = False
    privacy_spent: float = 0.0
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def time_to(self, target: float) -> float | None:
        """Simulated seconds until test accuracy first reached ``target`` (``None``: never)."""
        return next((t for t, _, acc in self.points if acc >= target), None)

    def final_accuracy(self) -> float:
        """Accuracy after the last step (0 if none)."""
        return self.points[-1][2] if self.points else 0.0

    def accuracy_at(self, seconds: float) -> float:
        """Accuracy of the model in force at ``seconds`` (0 before the first step)."""
        acc = 0.0
        for t, _, a in self.points:
            if t > seconds:
                break
            acc = a
        return acc

    def bytes_per_device_round(self) -> float:
        """Mean encoded bytes one device sent per update."""
        sizes = [b for v in self.update_bytes.values() for b in v]
        return float(np.mean(sizes)) if sizes else 0.0

    def _record(self, update: Update) -> None:
        self.update_bytes.setdefault(update.device_id, []).append(len(update.payload))


def simulate_fedavg(strategy: FedAvg, participants: Sequence[Participant], timings: Sequence[DeviceTiming],
                    evaluate: Evaluate, *, round_config: Callable[[int], RoundConfig], time_budget_s: float,
                    max_rounds: int, seed: int = 0, sampling_rate: float | None = None,
                    charge: PrivacyCharge | None = None, start: datetime | None = None) -> Trace:
    """Synchronous rounds until ``max_rounds``, the time budget, a stall or a refused privacy charge."""
    if len(participants) != len(timings):
        raise ConfigError("one timing per participant")
    rng = np.random.default_rng(seed)
    trace, now = Trace(), 0.0
    begin = start or _EPOCH
    enrolled = sorted({p.subject for p in participants})
    deadline = strategy.config.deadline_s
    for _ in range(max_rounds):
        if now >= time_budget_s:
            break
        if charge is not None:
            at = begin + timedelta(seconds=now)
            try:
                trace.privacy_spent += charge.charge_round(enrolled, at)
            except BudgetExhausted:
                break
        available = [i for i, t in enumerate(timings) if t.leaves_at_s > now]
        selected = [i for i in available if sampling_rate is None or rng.random() < sampling_rate]
        finish = {i: now + timings[i].duration_s * float(rng.uniform(0.9, 1.1)) for i in selected}
        answering = [i for i in selected if finish[i] < timings[i].leaves_at_s]
        if deadline is None:
            if len(answering) < len(selected):
                trace.stalled = True
                break
            close = max((finish[i] for i in answering), default=now + 1.0)
        else:
            close = now + deadline
            answering = [i for i in answering if finish[i] <= close]
            close = close if len(answering) < len(selected) else max((finish[i] for i in answering), default=close)
        if close > time_budget_s:
            break
        config = round_config(strategy.version)
        updates = [participants[i].train(strategy.parameters, strategy.version, config) for i in answering]
        for u in updates:
            trace._record(u)
        outcome = strategy.apply_round(updates)
        trace.rejected.extend(outcome.rejected)
        now = close
        if outcome.applied:
            trace.points.append((now, strategy.version, evaluate(strategy.parameters)))
        else:
            trace.rounds_failed += 1
    return trace


def simulate_fedbuff(strategy: FedBuff, participants: Sequence[Participant], timings: Sequence[DeviceTiming],
                     evaluate: Evaluate, *, round_config: Callable[[int], RoundConfig], time_budget_s: float,
                     max_updates: int, seed: int = 0) -> Trace:
    """Every device trains continuously; the buffer steps the model until the budget runs out."""
    if len(participants) != len(timings):
        raise ConfigError("one timing per participant")
    rng = np.random.default_rng(seed)
    trace = Trace()
    events: list[tuple[float, int]] = []
    pulled: dict[int, tuple[int, NDArrays]] = {}
    for i, t in enumerate(timings):
        pulled[i] = (strategy.version, strategy.parameters)
        heapq.heappush(events, (t.duration_s * float(rng.uniform(0.9, 1.1)), i))
    received = 0
    while events and received < max_updates:
        now, i = heapq.heappop(events)
        if now > time_budget_s:
            break
        if now >= timings[i].leaves_at_s:
            continue
        version, params = pulled[i]
        update = participants[i].train(params, version, round_config(version))
        trace._record(update)
        received += 1
        outcome = strategy.receive(update)
        trace.rejected.extend(outcome.rejected)
        if outcome.applied:
            trace.points.append((now, strategy.version, evaluate(strategy.parameters)))
        pulled[i] = (strategy.version, strategy.parameters)
        heapq.heappush(events, (now + timings[i].duration_s * float(rng.uniform(0.9, 1.1)), i))
    return trace
