"""Unlearning by SISA: erasing a subject retrains only its shard, exactly as if it had never taken part."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from iotguard.errors import ConfigError
from iotguard.learn.client import LocalTrainingClient, Participant, RoundConfig
from iotguard.learn.data import Dataset, partition, split_train_test, synthetic_digits
from iotguard.learn.model import Model, NDArrays
from iotguard.learn.simulation import DeviceTiming, simulate_fedavg
from iotguard.learn.strategy import FedAvg, FedAvgConfig
from iotguard.learn.unlearning import SisaEnsemble

FEATURES = 24
MODEL = Model(FEATURES, 10)
SALT = b"sisa-test-salt-0123456789"


def _fleet() -> tuple[dict[str, Dataset], Dataset]:
    train, test = split_train_test(synthetic_digits(speakers=6, per_class=20, features=FEATURES, seed=4), 0.25, 4)
    return {f"subject-{i}": p for i, p in enumerate(partition(train, 2, seed=4))}, test


class Trainer:
    """Federated training of one shard (FedAvg among the shard's devices), seeded by its members."""

    def __init__(self, data: dict[str, Dataset]) -> None:
        self.data = data
        self.calls: list[int] = []

    def __call__(self, shard: int, members: Sequence[str]) -> NDArrays:
        self.calls.append(shard)
        parts = [Participant(s, s, LocalTrainingClient(MODEL, self.data[s].x, self.data[s].y, seed=int(s[8:])),
                             seed=int(s[8:])) for s in members]
        fed = FedAvg(MODEL, MODEL.initial(0), FedAvgConfig(min_participants=1))
        simulate_fedavg(fed, parts, [DeviceTiming(1.0)] * len(parts), lambda p: 0.0,
                        round_config=lambda v: RoundConfig(v, {"epochs": 2, "batch_size": 16, "lr": 0.05}),
                        time_budget_s=1e9, max_rounds=5)
        return fed.parameters


def test_erasure_retrains_only_the_subjects_shard_and_equals_training_without_them() -> None:
    data, test = _fleet()
    trainer = Trainer(data)
    sisa = SisaEnsemble(MODEL, 3, trainer, SALT)
    sisa.fit(sorted(data))
    before = [None if p is None else [a.copy() for a in p] for p in sisa.parameters]
    assert float(np.mean(sisa.predict(test.x) == test.y)) > 0.7
    trainer.calls.clear()
    change = sisa.erase("subject-3")
    shard = sisa.shard_of("subject-3")
    assert trainer.calls == [shard]  # only the affected shard retrained
    assert (change.shard, change.old_version, change.new_version) == (shard, 1, 2)
    for other in set(range(3)) - {shard}:
        kept, old = sisa.parameters[other], before[other]
        assert kept is not None and old is not None
        assert all(np.array_equal(a, b) for a, b in zip(kept, old, strict=True))
    # Exact unlearning: the retrained shard is what training without the subject from the start gives.
    fresh = SisaEnsemble(MODEL, 3, Trainer(data), SALT)
    fresh.fit(sorted(set(data) - {"subject-3"}))
    retrained, reference = sisa.parameters[shard], fresh.parameters[shard]
    assert retrained is not None and reference is not None
    assert all(np.array_equal(a, b) for a, b in zip(retrained, reference, strict=True))
    assert np.array_equal(sisa.predict(test.x), fresh.predict(test.x))


def test_erasing_an_unknown_subject_is_an_error_not_a_silent_success() -> None:
    data, _ = _fleet()
    sisa = SisaEnsemble(MODEL, 2, Trainer(data), SALT)
    sisa.fit(["subject-0", "subject-1"])
    with pytest.raises(ConfigError) as e:
        sisa.erase("subject-9")
    assert e.value.code == "unknown_subject"
    with pytest.raises(ConfigError):
        SisaEnsemble(MODEL, 2, Trainer(data), b"short")
