"""A training run's settings: what an operator chooses, checked once, stored as the run's JSON config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from iotguard.errors import ConfigError
from iotguard.learn.client import RoundConfig
from iotguard.learn.compress import Compression, parse_schedule
from iotguard.learn.dp import DpConfig, calibrate_noise
from iotguard.learn.model import Model
from iotguard.learn.strategy import FedAvgConfig, FedBuffConfig

__all__ = ["RunSettings"]


@dataclass(frozen=True)
class RunSettings:
    """What an operator chooses for a run (stored as the run's JSON config)."""

    model_name: str
    features: int
    classes: int
    hidden: int = 0
    strategy: str = "fedavg"
    rounds: int = 10
    min_participants: int = 2
    deadline_s: float = 300.0
    buffer_size: int = 10
    server_lr: float = 1.0
    aggregator: str = "mean"
    max_update_norm: float = 10.0
    clip_norm: float | None = None
    compression: str = "none"
    topk_fraction: float = 0.01
    fit: Mapping[str, float] = field(default_factory=lambda: {"epochs": 1, "batch_size": 32, "lr": 0.1})
    secure: bool = False
    epsilon: float = 0.0
    delta: float = 1e-5
    noise_multiplier: float = 0.0
    #: Secure runs: the fraction of coordinates each round sends through secure aggregation (random-k, the same
    #: coordinates for every device of the round, error feedback on the device; 1: every coordinate).
    secure_fraction: float = 1.0
    #: FedBuff: an update trained on a version more than this many versions old is refused (``update_stale``).
    max_staleness: int = 100

    def __post_init__(self) -> None:
        if self.strategy not in ("fedavg", "fedbuff") or not 1 <= self.rounds <= 100_000:
            raise ConfigError("strategy must be fedavg or fedbuff, rounds 1..100000")
        if not 0 < self.deadline_s <= 86_400 or not self.max_update_norm > 0:
            raise ConfigError("deadline must be in (0, 86400] s and max_update_norm positive")
        schedule = parse_schedule(self.compression, self.topk_fraction)
        if self.secure and (self.aggregator != "mean" or self.clip_norm is None
                            or {c.scheme for offer in schedule for c in offer} != {"none"}
                            or self.min_participants < 3):
            raise ConfigError("a secure run (FedAvg or FedBuff) takes the mean, a clip norm, no compression and at "
                              "least 3 participants (robust rules and compression need plaintext updates)")
        if self.secure and self.strategy == "fedbuff" and self.buffer_size < max(3, self.min_participants):
            raise ConfigError("a secure FedBuff run's buffer_size (the devices of each secure round) must be at "
                              "least 3 and at least min_participants")
        if not 0 < self.secure_fraction <= 1 or (self.secure_fraction < 1 and not self.secure):
            raise ConfigError("secure_fraction must be in (0, 1], below 1 only in a secure run (plaintext runs "
                              "compress with top-k and 8-bit instead)")
        if not (0 <= self.epsilon <= 100 and 0 < self.delta < 1 and 0 <= self.noise_multiplier <= 1000):
            raise ConfigError("epsilon must be in [0, 100], delta in (0, 1)")
        if self.epsilon > 0 and not self.secure:
            raise ConfigError("DP (epsilon > 0) needs a secure run: the noise is added on the devices")
        self.model()
        self.fedavg()
        self.fedbuff()

    def model(self) -> Model:
        return Model(self.features, self.classes, self.hidden)

    def fedavg(self) -> FedAvgConfig:
        return FedAvgConfig(min_participants=self.min_participants, deadline_s=self.deadline_s,
                            aggregator=self.aggregator, max_update_norm=self.max_update_norm,
                            server_lr=self.server_lr)

    def fedbuff(self) -> FedBuffConfig:
        return FedBuffConfig(buffer_size=self.buffer_size, server_lr=self.server_lr, aggregator=self.aggregator,
                             max_update_norm=self.max_update_norm, max_staleness=self.max_staleness)

    def offer(self, version: int) -> tuple[Compression, ...]:
        """The compressions the round of ``version`` offers, best first (the run's schedule, entry ``version``
        mod its length)."""
        schedule = parse_schedule(self.compression, self.topk_fraction)
        return schedule[version % len(schedule)]

    def round_config(self, version: int, compression: Compression | None = None) -> RoundConfig:
        """What the round of ``version`` asks a device: fit settings, clip norm and the compression negotiated
        with it (by default the offer's first)."""
        return RoundConfig(version, dict(self.fit), clip_norm=self.clip_norm,
                           compression=compression or self.offer(version)[0])

    def dp(self) -> DpConfig:
        """The run's DP parameters (every selected device in every round: sampling rate 1).

        Raises:
            ConfigError: no clip norm (a DP run needs one).
        """
        if self.clip_norm is None:
            raise ConfigError("a DP run needs a clip norm")
        return DpConfig(self.clip_norm, self.noise_multiplier, 1.0, self.rounds, self.delta)

    def calibrated(self) -> RunSettings:
        """These settings with the noise multiplier whose whole run is ``(epsilon, delta)``-DP."""
        if self.epsilon <= 0 or self.noise_multiplier > 0:
            return self
        return replace(self, noise_multiplier=calibrate_noise(self.epsilon, 1.0, self.rounds, self.delta))

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RunSettings:
        return cls(**doc)
