"""The client API has Flower's NumPyClient signatures; only the (clipped, encoded) update leaves the device."""

from __future__ import annotations

import numpy as np

from iotguard.learn.client import LocalTrainingClient, NumPyClient, Participant, RoundConfig
from iotguard.learn.compress import Compression, decode_update
from iotguard.learn.data import synthetic_digits
from iotguard.learn.model import Model, flatten


def _client() -> tuple[Model, LocalTrainingClient]:
    data = synthetic_digits(speakers=1, per_class=10, features=8, seed=0)
    model = Model(features=8, classes=10)
    return model, LocalTrainingClient(model, data.x, data.y, seed=0)


def test_flower_style_fit_and_evaluate() -> None:
    _model, client = _client()
    as_protocol: NumPyClient = client
    params = as_protocol.get_parameters({})
    trained, n, metrics = as_protocol.fit(params, {"epochs": 3, "lr": 0.1, "batch_size": 10})
    assert n == 100 and isinstance(metrics, dict)
    assert [p.shape for p in trained] == [p.shape for p in params]
    loss0, _, m0 = as_protocol.evaluate(params, {})
    loss1, n1, m1 = as_protocol.evaluate(trained, {})
    assert n1 == 100 and loss1 < loss0 and float(m1["accuracy"]) > float(m0["accuracy"])


def test_participant_sends_clipped_encoded_update() -> None:
    model, client = _client()
    p = Participant("dev-1", "subject-1", client)
    global_params = model.initial(0)
    update = p.train(global_params, 7, RoundConfig(7, {"epochs": 2, "lr": 1.0}, clip_norm=0.5))
    assert update.base_version == 7 and update.subject == "subject-1"
    assert np.linalg.norm(update.vector) <= 0.5 + 1e-9
    decoded = decode_update(update.payload, model.size())
    assert np.allclose(decoded, update.vector, atol=1e-6)
    assert update.vector.shape == flatten(global_params).shape


def test_participant_compresses_when_the_round_asks() -> None:
    model, client = _client()
    p = Participant("dev-1", "subject-1", client)
    dense = p.train(model.initial(0), 0, RoundConfig(0, {"epochs": 1}))
    small = p.train(model.initial(0), 0, RoundConfig(0, {"epochs": 1}, compression=Compression("topk+q8", 0.05)))
    assert len(small.payload) * 10 < len(dense.payload)
