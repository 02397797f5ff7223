"""Server strategies: synchronous FedAvg (optionally DP and secure) and asynchronous FedBuff.

Both take decoded, checked updates and move the global model; neither does
I/O or keeps time (the caller decides when a round closes:
:mod:`iotguard.learn.simulation` on a simulated clock, the hub service on
the real one).

* :class:`FedAvg` (McMahan et al., AISTATS 2017): one round = the updates
  of the devices that answered before the round closed; fewer than
  ``min_participants`` and the round fails without touching the model.
  Plaintext updates are decoded strictly, norm-checked and combined with the
  configured rule (mean weighted by examples, coordinate median, trimmed
  mean). With ``secure=True`` the updates go through secure aggregation and
  are averaged equally (the hub learns neither an update nor a device's
  example count). With a :class:`~iotguard.learn.dp.DpConfig` the sum gets
  Gaussian noise and is divided by the expected participant count.
* :class:`FedBuff` (Nguyen et al., "Federated Learning with Buffered
  Asynchronous Aggregation", AISTATS 2022): every update is accepted when
  it arrives, weighted by staleness ``1 / sqrt(1 + tau)`` where ``tau`` is
  how many model versions passed since the device pulled; after
  ``buffer_size`` updates the buffer's mean is applied. Slow devices still
  contribute, they just do not hold anyone up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError, IotGuardError
from iotguard.learn.client import Update
from iotguard.learn.compress import decode_update
from iotguard.learn.dp import DpConfig
from iotguard.learn.model import Model, NDArrays, flatten, unflatten
from iotguard.learn.robust import AGGREGATORS, aggregate, check_norm
from iotguard.learn.secure import SecureRoundView, secure_sum

__all__ = ["FedAvg", "FedAvgConfig", "FedBuff", "FedBuffConfig", "RoundOutcome"]

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FedAvgConfig:
    """Synchronous FedAvg settings.

    Attributes:
        min_participants: Fewest answering devices for a round to count.
        deadline_s: How long a round waits for answers (``None``: until every selected device answers).
        aggregator: One of :data:`~iotguard.learn.robust.AGGREGATORS` (plaintext only).
        trim: Trim fraction of ``trimmed_mean``.
        max_update_norm: Updates above this L2 norm are rejected (plaintext only).
        server_lr: Server step size on the aggregated update.
        secure: Aggregate through secure aggregation.
        secure_bound: Per-coordinate clamp for fixed point when secure and not DP.
        dp: DP-FedAvg parameters, or ``None``.
    """

    min_participants: int = 2
    deadline_s: float | None = None
    aggregator: str = "mean"
    trim: float = 0.2
    max_update_norm: float | None = None
    server_lr: float = 1.0
    secure: bool = False
    secure_bound: float = 4.0
    dp: DpConfig | None = None

    def __post_init__(self) -> None:
        if self.min_participants < 1 or self.aggregator not in AGGREGATORS or not self.server_lr > 0:
            raise ConfigError("FedAvg needs min_participants >= 1, a known aggregator, server_lr > 0")
        if (self.secure or self.dp is not None) and self.aggregator != "mean":
            raise ConfigError("robust aggregators need plaintext updates: not with secure aggregation or DP")
        if self.secure and self.min_participants < 2:
            raise ConfigError("secure aggregation needs at least two participants")


@dataclass(frozen=True)
class RoundOutcome:
    """What one round or buffer flush did.

    Attributes:
        applied: Whether the global model moved.
        accepted: Devices whose update counted.
        rejected: ``(device_id, reason code)`` of refused updates.
        secure_view: The hub's view of the secure-aggregation round, if any.
    """

    applied: bool
    accepted: tuple[str, ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()
    secure_view: SecureRoundView | None = None


def _decode_checked(update: Update, dims: int, max_norm: float | None) -> Array:
    vector = decode_update(update.payload, dims)
    if max_norm is not None:
        check_norm(vector, max_norm)
    return vector


class FedAvg:
    """Synchronous federated averaging on one global model."""

    def __init__(self, model: Model, initial: NDArrays, config: FedAvgConfig, *, seed: int = 0,
                 population: int | None = None) -> None:
        model.check(initial)
        if config.dp is not None and not (population and population >= config.min_participants):
            raise ConfigError("DP-FedAvg needs the enrolled population size")
        self.model, self.config = model, config
        self.parameters = [p.copy() for p in initial]
        self.version = 0
        self.population = population
        self._rng = np.random.default_rng(seed)

    def apply_round(self, updates: Sequence[Update]) -> RoundOutcome:
        """Aggregate one round's updates (those that arrived before it closed) and step the model."""
        cfg, dims = self.config, self.model.size()
        rejected: list[tuple[str, str]] = []
        good: list[Update] = []
        vectors: list[Array] = []
        for u in updates:
            if u.base_version != self.version:
                rejected.append((u.device_id, "update_stale"))
                continue
            try:
                vectors.append(_decode_checked(u, dims, None if cfg.secure else cfg.max_update_norm))
            except IotGuardError as exc:
                rejected.append((u.device_id, exc.code))
                continue
            good.append(u)
        if len(good) < cfg.min_participants:
            return RoundOutcome(False, (), tuple(rejected))
        view = None
        if cfg.secure:
            bound = cfg.dp.clip_norm if cfg.dp is not None else cfg.secure_bound
            total, view = secure_sum({i: u.vector for i, u in enumerate(good)}, bound)
        else:
            total = np.sum(vectors, axis=0)
        if cfg.dp is not None:
            assert self.population is not None
            step = (total + cfg.dp.noise(dims, self._rng)) / (cfg.dp.sampling_rate * self.population)
        elif cfg.secure:
            step = total / len(good)
        else:
            step = aggregate(cfg.aggregator, vectors, [u.num_examples for u in good], cfg.trim)
        self._step(step * cfg.server_lr)
        return RoundOutcome(True, tuple(u.device_id for u in good), tuple(rejected), view)

    def _step(self, step: Array) -> None:
        self.parameters = unflatten(flatten(self.parameters) + step, self.parameters)
        self.version += 1


@dataclass(frozen=True)
class FedBuffConfig:
    """Asynchronous buffered aggregation settings.

    Attributes:
        buffer_size: Updates per server step (``K``).
        server_lr: Server step size.
        staleness_exponent: Weight ``(1 + tau) ** -exponent`` (0.5 in the paper).
        max_staleness: Updates older than this many versions are rejected.
        aggregator: Rule over the buffer (plaintext).
        trim: Trim fraction of ``trimmed_mean``.
        max_update_norm: Updates above this L2 norm are rejected.
    """

    buffer_size: int = 10
    server_lr: float = 1.0
    staleness_exponent: float = 0.5
    max_staleness: int = 100
    aggregator: str = "mean"
    trim: float = 0.2
    max_update_norm: float | None = None

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or not self.server_lr > 0 or self.staleness_exponent < 0 or self.max_staleness < 0:
            raise ConfigError("FedBuff needs buffer_size >= 1, server_lr > 0, non-negative staleness settings")
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(f"aggregator must be one of {AGGREGATORS}")


@dataclass
class FedBuff:
    """Buffered asynchronous aggregation on one global model."""

    model: Model
    initial: NDArrays
    config: FedBuffConfig = field(default_factory=FedBuffConfig)

    def __post_init__(self) -> None:
        self.model.check(self.initial)
        self.parameters = [p.copy() for p in self.initial]
        self.version = 0
        self._buffer: list[tuple[str, Array, float]] = []

    def receive(self, update: Update) -> RoundOutcome:
        """Take one update; step the model when the buffer is full."""
        tau = self.version - update.base_version
        if not 0 <= tau <= self.config.max_staleness:
            return RoundOutcome(False, (), ((update.device_id, "update_stale"),))
        try:
            vector = _decode_checked(update, self.model.size(), self.config.max_update_norm)
        except IotGuardError as exc:
            return RoundOutcome(False, (), ((update.device_id, exc.code),))
        weight = (1.0 + tau) ** -self.config.staleness_exponent
        self._buffer.append((update.device_id, vector * weight, weight))
        if len(self._buffer) < self.config.buffer_size:
            return RoundOutcome(False, (update.device_id,))
        ids = tuple(d for d, _, _ in self._buffer)
        vectors = [v for _, v, _ in self._buffer]
        step = aggregate(self.config.aggregator, vectors, [1.0] * len(vectors), self.config.trim)
        self._buffer.clear()
        self.parameters = unflatten(flatten(self.parameters) + self.config.server_lr * step, self.parameters)
        self.version += 1
        return RoundOutcome(True, ids)
