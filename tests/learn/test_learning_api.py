"""Agents train through the hub: signed ``learn_task`` / ``learn_update`` requests, Cedar, posture, a signed result."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from iotguard.agent.learning import LearningParticipant
from iotguard.errors import ConfigError, EnrollmentError, IntegrityError
from iotguard.hub.policy_store import save_posture
from iotguard.hub.services.learning import RunSettings
from iotguard.learn import LocalTrainingClient, Model, verify_artifact
from iotguard.learn.compress import SCHEMES
from iotguard.learn.data import partition, split_train_test, synthetic_digits
from iotguard.learn.model import accuracy
from tests.hub.conftest import HubParts, make_hub

FEATURES = 24


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubParts]:
    parts = make_hub(tmp_path)
    yield parts
    parts.store.engine.dispose()


def _verify(hub: HubParts, device_id: str) -> None:
    posture = hub.services.posture.posture.update(device_id, trust_tier="verified")
    save_posture(hub.store.engine, [posture], now=hub.services.clock.now())


def test_three_agents_train_a_model_through_the_hub_and_an_unverified_one_is_refused(hub: HubParts) -> None:
    train, test = split_train_test(synthetic_digits(speakers=3, per_class=20, features=FEATURES, seed=2), 0.25, 2)
    parts = partition(train, 1, seed=2)
    model = Model(FEATURES, 10)
    agents = [hub.agent(f"dev-{i}") for i in range(4)]
    for a in agents[:3]:
        _verify(hub, a.device_id)
    settings = RunSettings("digits", FEATURES, 10, rounds=4, min_participants=3,
                           fit={"epochs": 2, "batch_size": 16, "lr": 0.05})
    run = hub.services.learning.start("run-1", settings, [a.device_id for a in agents], actor="alice")
    assert run.devices == ("dev-0", "dev-1", "dev-2")
    learners = [LearningParticipant(a, LocalTrainingClient(model, p.x, p.y, seed=i))
                for i, (a, p) in enumerate(zip(agents[:3], parts, strict=True))]
    for round_ in range(4):
        answers = [lp.train_round("run-1") for lp in learners]
        assert answers[-1]["version"] == round_ + 1
    assert answers[-1]["status"] == "completed"
    published = hub.services.models.get("digits")
    artifact = verify_artifact(published.artifact, hub.services.models.signing_key())
    assert accuracy(artifact.model, artifact.parameters, test.x, test.y) > 0.7
    # The unverified device is refused by Cedar before the learning service sees it.
    stranger = LearningParticipant(agents[3], LocalTrainingClient(model, parts[0].x, parts[0].y))
    with pytest.raises(EnrollmentError, match="403 policy_denied"):
        stranger.train_round("run-1")
    # Every device may fetch the published model; it verifies it against its pinned fleet CA and runs it.
    on_device = stranger.fetch_model("digits")
    assert on_device.version == published.version
    assert np.array_equal(on_device.predict(test.x), artifact.predict(test.x))


def test_agent_refuses_a_model_whose_key_the_fleet_ca_did_not_endorse(hub: HubParts,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    agent = hub.agent("dev-0")
    model = Model(FEATURES, 10)
    hub.services.models.publish("digits", model, model.initial(0), metrics={}, source="file", actor="alice")
    learner = LearningParticipant(agent, LocalTrainingClient(model, np.zeros((1, FEATURES)), np.zeros(1, np.int64)))
    assert learner.fetch_model("digits").version == 1
    # A hub (or anyone on its database) substituting its own model key: the endorsement no longer matches.
    rogue = Ed25519PrivateKey.generate()
    rogue_key = rogue.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    monkeypatch.setattr(hub.services.models, "signing_key", lambda: rogue_key)
    with pytest.raises(IntegrityError):
        learner.fetch_model("digits")
    with pytest.raises(EnrollmentError, match="404 unknown_model"):
        learner.fetch_model("nothing")


def test_replayed_update_request_and_duplicate_update_are_refused(hub: HubParts) -> None:
    agents = [hub.agent(f"dev-{i}") for i in range(2)]
    for a in agents:
        _verify(hub, a.device_id)
    settings = RunSettings("digits", FEATURES, 10, rounds=2, min_participants=2)
    hub.services.learning.start("run-1", settings, [a.device_id for a in agents], actor="alice")
    train = synthetic_digits(speakers=1, per_class=5, features=FEATURES, seed=3)
    learner = LearningParticipant(agents[0], LocalTrainingClient(Model(FEATURES, 10), train.x, train.y))
    assert learner.train_round("run-1")["version"] == 0
    wire, _ = agents[0]._signed("learn_update", {"run_id": "run-1", "base_version": 0, "num_examples": 5,
                                                "update": b"IGU1"})
    first = hub.client.post("/v1/learn/update", json=wire)
    assert first.status_code == 400 and first.json()["error"] == "update_malformed"
    replayed = hub.client.post("/v1/learn/update", json=wire)
    assert replayed.status_code == 409 and replayed.json()["error"] == "replay"
    assert learner.train_round("run-1")["status"] == "waiting"  # sent already: nothing trained or sent
    again = LearningParticipant(agents[0], LocalTrainingClient(Model(FEATURES, 10), train.x, train.y))
    with pytest.raises(EnrollmentError, match="409 update_duplicate"):
        again.train_round("run-1")
    unknown = hub.client.post("/v1/learn/task", json=agents[1]._signed("learn_task", {"run_id": "nope"})[0])
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_run"


def test_agents_say_which_compressions_they_can_send_and_the_hub_negotiates_over_signed_requests(
        hub: HubParts) -> None:
    train, _ = split_train_test(synthetic_digits(speakers=3, per_class=20, features=FEATURES, seed=3), 0.25, 3)
    parts = partition(train, 1, seed=3)
    model = Model(FEATURES, 10)
    agents = [hub.agent(f"dev-{i}") for i in range(4)]
    for a in agents:
        _verify(hub, a.device_id)
    settings = RunSettings("digits", FEATURES, 10, rounds=2, min_participants=3, compression="topk+q8|q8|none",
                           topk_fraction=0.1, fit={"epochs": 1, "batch_size": 16, "lr": 0.05})
    hub.services.learning.start("run-n", settings, [a.device_id for a in agents], actor="alice")
    can_send: list[list[str] | None] = [None, ["q8", "none"], ["none"]]
    learners = [LearningParticipant(a, LocalTrainingClient(model, p.x, p.y, seed=i), accepts=can_send[i])
                for i, (a, p) in enumerate(zip(agents[:3], parts, strict=True))]
    for lp in learners:
        lp.train_round("run-n")
    sent = {u.device_id: u.payload[4] for u in hub.services.learning._store.pending("run-n")}
    assert sent == {"dev-0": SCHEMES["topk+q8"], "dev-1": SCHEMES["q8"], "dev-2": SCHEMES["none"]}
    # A device that can send only float32 over a link of 100 bytes finds nothing it can send in this round.
    narrow = LearningParticipant(agents[3], LocalTrainingClient(model, parts[0].x, parts[0].y), accepts=["none"],
                                 max_update_bytes=100)
    with pytest.raises(EnrollmentError, match="409 compression_unsupported"):
        narrow.train_round("run-n")
    with pytest.raises(ConfigError):
        LearningParticipant(agents[3], LocalTrainingClient(model, parts[0].x, parts[0].y), accepts=["zip"])
