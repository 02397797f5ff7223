"""A secure DP-FedAvg run on the hub: updates travel only masked through secure-aggregation rounds over the
device plane (instrumented: no request the hub verified holds an update, its fixed-point form or its noised form),
each round is charged to every selected subject in the one ledger before any noise is drawn, a subject with
two devices is charged once and contributes one device a round, and a subject whose budget is spent is left out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest

from iotguard.agent.learning import LearningParticipant
from iotguard.errors import ConfigError, EnrollmentError
from iotguard.hub.services.learning import RunSettings
from iotguard.identity import VerifiedRequest
from iotguard.learn import LocalTrainingClient, Model, verify_artifact
from iotguard.learn.data import partition, split_train_test, synthetic_digits
from iotguard.learn.distributed import round_coordinates
from iotguard.learn.model import accuracy, flatten
from tests.hub.conftest import HubParts, make_hub
from tests.learn.secure_spy import instrument, verified_agents

FEATURES = 24
EPSILON, ROUNDS = 10.0, 3


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubParts]:
    parts = make_hub(tmp_path, analytics_budget_epsilon=12.0)
    yield parts
    parts.store.engine.dispose()


def test_a_secure_dp_run_sends_only_masked_updates_and_charges_each_subject_in_the_ledger(
        hub: HubParts, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    services = hub.services
    train, _test = split_train_test(synthetic_digits(speakers=3, per_class=20, features=FEATURES, seed=4), 0.25, 4)
    parts = partition(train, 2, seed=4)
    model = Model(FEATURES, 10)
    agents = verified_agents(hub, 6)
    services.consent.link("alice", "dev-0")
    services.consent.link("alice", "dev-1")  # one subject, two devices
    assert services.analytics is not None
    ledger = services.analytics.ledger
    ledger.charge_all(["dev-5"], 5.0, "central", "earlier query", services.clock.now())  # 7 left < 10

    # Instrument everything devices hand the hub, and everything that is a device's update in any form.
    spy = instrument(services, monkeypatch)
    seen, clear, updates = spy.seen, spy.clear, spy.updates

    settings = RunSettings("digits", FEATURES, 10, rounds=ROUNDS, min_participants=3, clip_norm=0.5, secure=True,
                           epsilon=EPSILON, deadline_s=60, fit={"epochs": 2, "batch_size": 16, "lr": 0.05})
    run = services.learning.start("run-s", settings, [a.device_id for a in agents], actor="alice-op")
    assert "dev-5" not in run.devices  # its subject cannot cover the run's epsilon
    learners = [LearningParticipant(a, LocalTrainingClient(model, p.x, p.y, seed=i))
                for i, (a, p) in enumerate(zip(agents, parts, strict=True))]
    spy.capture(learners, monkeypatch)

    with pytest.raises(EnrollmentError, match="secure_only"):  # no plaintext update is taken
        agents[2].request("learn_update", "/v1/learn/update",
                          {"run_id": "run-s", "base_version": 0, "num_examples": 1, "update": b"IGU1"})
    done = False
    not_selected = 0
    caplog.set_level("WARNING")
    for _ in range(400):
        for lp in learners[:5]:
            try:
                lp.train_round("run-s")
            except EnrollmentError as exc:
                if "run_not_running" in str(exc):
                    done = True
                    break
                assert "HTTP 409 not_selected" in str(exc), exc  # a normal answer: not a 5xx
                not_selected += 1
        if done:
            break
    status = services.learning.status("run-s")
    assert not_selected > 0 and not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert (status["status"], status["version"]) == ("completed", ROUNDS), status
    assert status["accepted_updates"] == 4 * ROUNDS  # alice, dev-2, dev-3, dev-4 each round
    assert len(updates) == 4 * ROUNDS
    assert services.models.get("digits").version == 1

    # The hub never received an update in clear, nor its fixed-point or noised integer form.
    actions = {a for a, _ in seen}
    assert "aggregate" in actions and "learn_update" in actions  # the refused plaintext attempt above only
    assert not spy.leaked()
    masked = [np.frombuffer(cbor2.loads(bytes(body["message"]))["vector"], "<u4")
              for a, body in seen if a == "aggregate" and body["step"] == "masked"]
    assert len(masked) == 4 * ROUNDS
    assert not any(np.array_equal(m, (c % (1 << 32)).astype(np.uint32)) for m in masked for c in clear)

    # The ledger: every selected subject is charged the run's epsilon once (federated column), alice once
    # for her two devices; the subject left out is not charged.
    run_epsilon = settings.calibrated().dp().epsilon_after(ROUNDS)  # calibrated to at most EPSILON
    assert EPSILON * 0.998 <= run_epsilon <= EPSILON
    for subject in ("alice", "dev-2", "dev-3", "dev-4"):
        spent = sum(line.federated for line in ledger.statement(subject))
        assert spent == pytest.approx(run_epsilon, abs=ROUNDS * 1e-6), subject  # increments rounded up
    assert sum(line.federated for line in ledger.statement("dev-5")) == 0
    assert status["epsilon_spent"] == pytest.approx(run_epsilon, abs=1e-4)


def test_a_round_whose_subjects_budgets_are_spent_does_not_start(hub: HubParts) -> None:
    services = hub.services
    agents = verified_agents(hub, 3)
    settings = RunSettings("digits", FEATURES, 10, rounds=2, min_participants=3, clip_norm=0.5, secure=True,
                           epsilon=EPSILON, fit={"epochs": 1, "batch_size": 16, "lr": 0.05})
    services.learning.start("run-b", settings, [a.device_id for a in agents], actor="op")
    assert services.analytics is not None
    # Spent elsewhere after enrolment: the next round cannot select it, and two are too few.
    services.analytics.ledger.charge_all(["dev-0"], 11.0, "central", "a query", services.clock.now())
    with pytest.raises(EnrollmentError, match="too_few_participants"):
        agents[1].request("learn_task", "/v1/learn/task", {"run_id": "run-b"})
    assert sum(line.federated for line in services.analytics.ledger.statement("dev-1")) == 0


def test_settings_that_would_leak_updates_are_refused() -> None:
    with pytest.raises(ConfigError):
        RunSettings("m", 4, 2, epsilon=1.0)  # noise is added on devices: DP needs a secure run
    with pytest.raises(ConfigError):
        RunSettings("m", 4, 2, secure=True, clip_norm=1.0, min_participants=3, aggregator="median")
    with pytest.raises(ConfigError):
        RunSettings("m", 4, 2, secure=True, min_participants=3)  # no clip norm


def test_a_random_k_secure_run_sends_only_the_rounds_coordinates_and_still_learns(
        hub: HubParts, monkeypatch: pytest.MonkeyPatch) -> None:
    services = hub.services
    train, test = split_train_test(synthetic_digits(speakers=4, per_class=20, features=FEATURES, seed=5), 0.25, 5)
    parts = partition(train, 1, seed=5)
    model = Model(FEATURES, 10)
    agents = verified_agents(hub, 4)
    seen: list[dict[str, Any]] = []
    verify = services.plane.verify

    def spy(action: str, wire: Any, client: str) -> VerifiedRequest:
        req = verify(action, wire, client)
        if action == "aggregate" and req.body["step"] == "masked":
            seen.append(cbor2.loads(bytes(req.body["message"])))
        return req

    monkeypatch.setattr(services.plane, "verify", spy)
    rounds = 8
    settings = RunSettings("digits", FEATURES, 10, rounds=rounds, min_participants=3, clip_norm=2.0, secure=True,
                           secure_fraction=0.25, deadline_s=60, fit={"epochs": 2, "batch_size": 16, "lr": 0.1})
    services.learning.start("run-k", settings, [a.device_id for a in agents], actor="op")
    learners = [LearningParticipant(a, LocalTrainingClient(model, p.x, p.y, seed=i))
                for i, (a, p) in enumerate(zip(agents, parts, strict=True))]
    start = flatten(model.initial(0))
    versions: list[np.ndarray] = []
    for _ in range(400):
        status = services.learning.status("run-k")
        if status["status"] != "running":
            break
        if status["version"] > len(versions):
            versions.append(flatten(services.learning.task("run-k", "dev-0").parameters))
        for lp in learners:
            try:
                lp.train_round("run-k")
            except EnrollmentError as exc:
                assert "run_not_running" in str(exc) or "not_selected" in str(exc), exc
    assert services.learning.status("run-k")["status"] == "completed"
    k = round(0.25 * model.size())
    assert seen and all(len(m["vector"]) == 4 * k for m in seen)  # k words, not the model's d
    # Each applied round moved only the coordinates its round id chose.
    bindings = [services.learning._store.secure_round("run-k", v) for v in range(rounds)]
    assert len(versions) == rounds - 1  # versions 1 .. rounds-1 seen while running (the last is published)
    previous = start
    for v, params in enumerate(versions):
        bound = bindings[v]
        assert bound is not None
        moved = np.flatnonzero(params - previous)
        assert set(moved) <= set(round_coordinates(bound.round_id, model.size(), k).tolist())
        previous = params
    published = services.models.get("digits")
    artifact = verify_artifact(published.artifact, services.models.signing_key())
    assert accuracy(artifact.model, artifact.parameters, test.x, test.y) > 0.7  # 0.885 here; 0.075 untrained


def test_random_k_is_a_secure_run_setting_only() -> None:
    with pytest.raises(ConfigError):
        RunSettings("m", 4, 2, secure_fraction=0.5)  # plaintext runs compress with top-k and 8-bit
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError):
            RunSettings("m", 4, 2, secure=True, clip_norm=1.0, min_participants=3, secure_fraction=bad)
