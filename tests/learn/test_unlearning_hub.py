"""Unlearning on the hub: erasing a subject retrains every run (SISA shard) their devices were in without them,
and the erasure report names the model, the versions that held them and the retraining run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotguard.agent.learning import LearningParticipant
from iotguard.errors import EnrollmentError
from iotguard.hub.policy_store import save_posture
from iotguard.hub.services.learning import RunSettings
from iotguard.learn import LocalTrainingClient, Model
from iotguard.learn.data import partition, synthetic_digits
from tests.hub.conftest import HubParts, make_hub

FEATURES = 24


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubParts]:
    parts = make_hub(tmp_path)
    yield parts
    parts.store.engine.dispose()


def _train(learners: list[LearningParticipant], run_id: str, rounds: int) -> None:
    for _ in range(rounds):
        for lp in learners:
            lp.train_round(run_id)


def test_erasing_a_subject_retrains_the_models_they_contributed_to_without_them(hub: HubParts) -> None:
    services = hub.services
    agents = [hub.agent(f"dev-{i}") for i in range(4)]
    save_posture(hub.store.engine, [services.posture.posture.update(a.device_id, trust_tier="verified")
                                    for a in agents], now=services.clock.now())
    services.consent.link("carol", "dev-0")
    data = partition(synthetic_digits(speakers=4, per_class=10, features=FEATURES, seed=3), 1, seed=3)
    model = Model(FEATURES, 10)
    learners = [LearningParticipant(a, LocalTrainingClient(model, p.x, p.y, seed=i))
                for i, (a, p) in enumerate(zip(agents, data, strict=True))]
    settings = RunSettings("digits", FEATURES, 10, rounds=2, min_participants=3,
                           fit={"epochs": 1, "batch_size": 16, "lr": 0.05})
    services.learning.start("run-1", settings, [a.device_id for a in agents], actor="op")
    _train(learners, "run-1", 2)
    assert services.models.get("digits").version == 1

    record = services.consent.erase("carol", actor="dpo")
    assert record.devices == ("dev-0",)
    assert [dict(m) for m in record.models] == [{"model": "digits", "versions": [1], "run_id": "run-1",
                                                 "retrain_run": "run-1.u1", "reason": ""}]
    assert record.to_dict()["models"][0]["retrain_run"] == "run-1.u1"
    retrain = services.learning.status("run-1.u1")
    assert (retrain["status"], retrain["devices"]) == ("running", 3)
    with pytest.raises(EnrollmentError, match="not_eligible"):
        learners[0].train_round("run-1.u1")  # the erased subject's device takes no part
    _train(learners[1:], "run-1.u1", 2)
    assert services.models.get("digits").version == 2
    assert services.models.get("digits", 2).source == "learn:run-1.u1"

    # A later erasure of another contributor concerns the retrained model, not the superseded run (and two
    # devices left are fewer than the run's three participants: the report says why nothing is retrained).
    services.consent.link("dave", "dev-1")
    again = services.consent.erase("dave", actor="dpo")
    assert [(m["run_id"], m["versions"], m["retrain_run"]) for m in again.models] == [("run-1.u1", [2], None)]
    assert "2 eligible devices" in again.models[0]["reason"]


def test_an_erasure_that_leaves_too_few_devices_says_why_no_model_was_retrained(hub: HubParts) -> None:
    services = hub.services
    agents = [hub.agent(f"dev-{i}") for i in range(3)]
    save_posture(hub.store.engine, [services.posture.posture.update(a.device_id, trust_tier="verified")
                                    for a in agents], now=services.clock.now())
    services.consent.link("erin", "dev-2")
    services.learning.start("run-2", RunSettings("digits", FEATURES, 10, rounds=2, min_participants=3),
                            [a.device_id for a in agents], actor="op")
    record = services.consent.erase("erin", actor="dpo")
    (entry,) = record.models
    assert entry["retrain_run"] is None and "eligible devices" in entry["reason"]
    assert services.learning.status("run-2")["status"] == "stopped"  # the run that held erin no longer trains
