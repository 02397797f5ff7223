"""Unlearning by SISA sharding (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021).

Subjects are split into ``S`` shards by a keyed hash of their id; each shard
has its own model, trained only on the devices of its shard's subjects (in
federation: a FedAvg run among those devices, supplied by the caller as
``train_shard``). The ensemble predicts with the mean of the shards' class
probabilities. Erasing a subject retrains *only its shard*, from the initial
model, without that subject; every other shard is untouched, so the cost of
an erasure is one shard's training, not the fleet's. :meth:`SisaEnsemble.erase`
returns what changed (shard, old and new version) for the erasure report.

Exactness: a shard retrained without the subject is the model a fresh run
without the subject would have produced, provided ``train_shard`` is
deterministic in its members (seeded), which the test checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError
from iotguard.learn.model import Model, NDArrays

__all__ = ["ShardChange", "SisaEnsemble"]

TrainShard = Callable[[int, Sequence[str]], NDArrays]


@dataclass(frozen=True)
class ShardChange:
    """One erasure's effect: ``shard`` moved from ``old_version`` to ``new_version`` without ``subject``."""

    subject: str
    shard: int
    old_version: int
    new_version: int
    members_left: int


class SisaEnsemble:
    """``shards`` models over disjoint subject shards.

    Args:
        model: Architecture of every shard model.
        shards: Number of shards (>= 1).
        train_shard: Trains one shard from the initial model on the given subjects' devices.
        salt: Key of the shard assignment (so a subject cannot pick its shard).
    """

    def __init__(self, model: Model, shards: int, train_shard: TrainShard, salt: bytes) -> None:
        if shards < 1 or len(salt) < 16:
            raise ConfigError("SISA needs at least one shard and a 16-byte salt")
        self.model, self.shards = model, shards
        self._train, self._salt = train_shard, salt
        self._members: list[set[str]] = [set() for _ in range(shards)]
        self.parameters: list[NDArrays | None] = [None] * shards
        self.versions = [0] * shards

    def shard_of(self, subject: str) -> int:
        """The shard ``subject`` belongs to."""
        digest = hashlib.sha256(self._salt + subject.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.shards

    def members(self, shard: int) -> list[str]:
        """Subjects of ``shard``, sorted."""
        return sorted(self._members[shard])

    def fit(self, subjects: Sequence[str]) -> None:
        """Assign ``subjects`` to shards and train every non-empty shard."""
        for s in subjects:
            self._members[self.shard_of(s)].add(s)
        for shard in range(self.shards):
            if self._members[shard]:
                self.parameters[shard] = self._train(shard, self.members(shard))
                self.versions[shard] += 1

    def probabilities(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Mean class probabilities of the trained shards.

        Raises:
            ConfigError: no shard is trained.
        """
        trained = [p for p in self.parameters if p is not None]
        if not trained:
            raise ConfigError("no trained shard")
        out: npt.NDArray[np.float64] = np.mean([self.model.probabilities(p, x) for p in trained], axis=0)
        return out

    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """The ensemble's class of each row."""
        out: npt.NDArray[np.int64] = np.argmax(self.probabilities(x), axis=1).astype(np.int64)
        return out

    def erase(self, subject: str) -> ShardChange:
        """Remove ``subject`` and retrain only its shard (an emptied shard drops out of the ensemble).

        Raises:
            ConfigError: ``subject`` is in no shard (code ``unknown_subject``).
        """
        shard = self.shard_of(subject)
        if subject not in self._members[shard]:
            raise ConfigError(f"subject {subject} contributed to no shard", code="unknown_subject")
        self._members[shard].discard(subject)
        old = self.versions[shard]
        self.parameters[shard] = self._train(shard, self.members(shard)) if self._members[shard] else None
        self.versions[shard] = old + 1
        return ShardChange(subject, shard, old, old + 1, len(self._members[shard]))
