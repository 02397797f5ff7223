"""On-device inference: the agent fetches the signed model, verifies it against its pinned CA, runs it on its own
samples and submits only the outputs, through the device model's data contract (``digit`` of ``mic-1``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from iotguard.agent.inference import OnDeviceInference
from iotguard.agent.learning import LearningParticipant
from iotguard.errors import ConfigError
from iotguard.learn import LocalTrainingClient, Model
from iotguard.learn.data import split_train_test, synthetic_digits
from iotguard.learn.model import sgd
from iotguard.privacy import ConsentState
from iotguard.wire import decode_reading
from tests.hub.conftest import HubParts, make_hub

FEATURES = 24


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubParts]:
    parts = make_hub(tmp_path)
    yield parts
    parts.store.engine.dispose()


def test_agent_runs_the_verified_model_locally_and_reports_only_its_outputs_under_the_contract(
        hub: HubParts) -> None:
    train, test = split_train_test(synthetic_digits(speakers=3, per_class=20, features=FEATURES, seed=5), 0.25, 5)
    model = Model(FEATURES, 10)
    params = sgd(model, model.initial(0), train.x, train.y, epochs=20, batch_size=16, lr=0.1,
                 rng=np.random.default_rng(0))
    hub.services.models.publish("digits", model, params, metrics={}, source="file", actor="op")
    agent = hub.agent("mic-7", model="mic-1")
    agent.attach_privacy("mic-1", ConsentState("owner-7"))
    artifact = LearningParticipant(agent, LocalTrainingClient(model, test.x, test.y)).fetch_model("digits")
    sent: list[bytes] = []
    agent.on_submit = lambda _epoch, _seq, body: sent.append(body)

    local = OnDeviceInference(agent, artifact, "digit")
    labels = local.infer(test.x)
    assert np.mean([int(c) for c in labels] == test.y) > 0.7  # the model works on the device's own data
    seqs = local.report(test.x[:3], ts_ms=1_700_000_000_000)
    assert seqs
    readings = [decode_reading(b) for b in sent]
    assert len(readings) == len(seqs)
    assert all(set(r.fields) <= {"digit"} for r in readings)  # the output only, never the features
    keypad = [r for r in readings if r.fields]
    # the contract's rate limit (keypad: one a second) lets the first of three through
    assert [(r.purpose, r.fields["digit"]) for r in keypad] == [("keypad", labels[0])]


def test_a_contract_that_does_not_declare_the_output_refuses_to_report(hub: HubParts) -> None:
    model = Model(FEATURES, 10)
    hub.services.models.publish("digits", model, model.initial(0), metrics={}, source="file", actor="op")
    agent = hub.agent("thermo-7")
    artifact = LearningParticipant(agent, LocalTrainingClient(model, np.zeros((1, FEATURES)),
                                                              np.zeros(1, np.int64))).fetch_model("digits")
    with pytest.raises(ConfigError, match="data contract"):
        OnDeviceInference(agent, artifact, "digit")  # no pipeline attached: nothing may leave
    agent.attach_privacy("thermo-1", ConsentState("owner-8"))
    with pytest.raises(ConfigError, match="does not declare"):
        OnDeviceInference(agent, artifact, "temperature")  # a float field cannot carry a class
