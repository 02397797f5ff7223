"""Secure FedBuff (ADR 1307): buffered asynchronous rounds under secure aggregation. Devices train when they can,
say they are ready, and every ``buffer_size`` ready devices form one secure round; a slow device never holds the
model back, its stale update enters a later round scaled down by the staleness weight the hub hands it, no request
the hub verified holds an update in any clear form, and each subject is charged for the rounds it took part in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iotguard.agent.learning import LearningParticipant
from iotguard.errors import ConfigError, EnrollmentError
from iotguard.hub.services.learning import RunSettings
from iotguard.hub.stores.learning import next_row
from iotguard.learn import LocalTrainingClient, Model
from iotguard.learn.data import partition, split_train_test, synthetic_digits
from iotguard.learn.distributed import SecureRoundPlan
from iotguard.learn.dp import clip
from tests.hub.conftest import HubParts, make_hub
from tests.learn.secure_spy import instrument, verified_agents

FEATURES = 24
EPSILON, ROUNDS, K = 10.0, 4, 3


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubParts]:
    parts = make_hub(tmp_path, analytics_budget_epsilon=12.0)
    yield parts
    parts.store.engine.dispose()


def _settings(**changes: Any) -> RunSettings:
    base: dict[str, Any] = {"strategy": "fedbuff", "buffer_size": K, "rounds": ROUNDS, "min_participants": 3,
                            "clip_norm": 0.5, "secure": True, "epsilon": EPSILON, "deadline_s": 60,
                            "fit": {"epochs": 1, "batch_size": 16, "lr": 0.05}}
    return RunSettings("digits", FEATURES, 10, **(base | changes))


def _step_all(learners: dict[str, LearningParticipant], answers: dict[str, list[dict[str, Any]]]) -> bool:
    """One call of each learner's train_round; True once the run is over."""
    for device, lp in learners.items():
        try:
            answers.setdefault(device, []).append(lp.train_round("run-b"))
        except EnrollmentError as exc:
            assert "run_not_running" in str(exc), exc
            return True
    return False


def test_a_secure_fedbuff_run_is_not_held_back_by_slow_devices_and_weights_their_stale_updates(
        hub: HubParts, monkeypatch: pytest.MonkeyPatch) -> None:
    services = hub.services
    train, _test = split_train_test(synthetic_digits(speakers=3, per_class=20, features=FEATURES, seed=6), 0.25, 6)
    parts = partition(train, 2, seed=6)
    model = Model(FEATURES, 10)
    agents = verified_agents(hub, 6)
    assert services.analytics is not None
    ledger = services.analytics.ledger

    spy = instrument(services, monkeypatch)
    services.learning.start("run-b", _settings(), [a.device_id for a in agents], actor="op")
    learners = {a.device_id: LearningParticipant(a, LocalTrainingClient(model, p.x, p.y, seed=i))
                for i, (a, p) in enumerate(zip(agents, parts, strict=True))}
    spy.capture(learners.values(), monkeypatch)

    slow = {d: learners[d] for d in ("dev-4", "dev-5")}
    fast = {d: lp for d, lp in learners.items() if d not in slow}
    answers: dict[str, list[dict[str, Any]]] = {}
    encoded: list[np.ndarray] = []
    encode = SecureRoundPlan.encode

    def recording_encode(plan: SecureRoundPlan, update: np.ndarray, noise: Any) -> Any:
        encoded.append(update.copy())
        return encode(plan, update, noise)

    monkeypatch.setattr(SecureRoundPlan, "encode", recording_encode)
    for lp in slow.values():  # they pull version 0 and train (slowly): they report ready only much later
        assert lp.train_round("run-b")["status"] == "trained"
    slow_updates = spy.updates[:2]
    for _ in range(200):  # the fast devices alone: buffers of 3 ready devices, one secure round each
        _step_all(fast, answers)
        if services.learning.status("run-b")["version"] >= 2:
            break
    assert services.learning.status("run-b")["version"] == 2  # the model moved on without the slow devices
    assert any(a.get("status") == "buffering" for a in answers["dev-3"] + answers["dev-0"])  # 4 ready, K = 3
    done = False
    for _ in range(300):
        if done := _step_all(learners, answers):
            break
    status = services.learning.status("run-b")
    assert done and (status["status"], status["version"]) == ("completed", ROUNDS), status
    assert services.models.get("digits").version == 1

    # The slow devices' version-0 updates entered a later round, scaled by the weight the hub handed them.
    for device in slow:
        joined = [a for a in answers[device] if "weight" in a]
        assert len(joined) == 1 and joined[0]["base_version"] == 0 and joined[0]["version"] >= 2, answers[device]
        assert joined[0]["weight"] == pytest.approx((1 + joined[0]["version"]) ** -0.5) and joined[0]["weight"] < 1
    for device, update in zip(slow, slow_updates, strict=True):  # the device scaled its clipped update by it
        weight = next(a["weight"] for a in answers[device] if "weight" in a)
        assert sum(np.allclose(e, weight * clip(update, 0.5)) for e in encoded) == 1, device
    bindings = services.learning._store.secure_rounds("run-b")
    assert [b.version for b in bindings] == list(range(ROUNDS)) and all(len(b.members) == K for b in bindings)
    assert status["accepted_updates"] == K * ROUNDS

    # No request the hub verified held an update in clear, nor its weighted fixed-point or noised form.
    assert "aggregate" in {a for a, _ in spy.seen} and "learn_update" not in {a for a, _ in spy.seen}
    assert spy.clear and not spy.leaked()

    # Each subject pays for the rounds it took part in: n rounds cost epsilon_after(n), whatever the run's version.
    dp = _settings().calibrated().dp()
    for device in learners:
        n = sum(device in b.members for b in bindings)
        spent = sum(line.federated for line in ledger.statement(device))
        assert spent == pytest.approx(dp.epsilon_after(n), abs=ROUNDS * 1e-6), (device, n)
    assert {sum(d in b.members for b in bindings) for d in slow} == {1}


def test_a_ready_update_beyond_max_staleness_is_refused_and_trained_again(hub: HubParts) -> None:
    services = hub.services
    agents = verified_agents(hub, 3)
    services.learning.start("run-b", _settings(epsilon=0.0), [a.device_id for a in agents], actor="op")
    ask = {"run_id": "run-b"}
    answer = agents[0].request("learn_task", "/v1/learn/task", ask)
    assert answer["buffered"] is True and answer["secure"] is None and answer["buffering"] is False
    assert agents[0].request("learn_task", "/v1/learn/task", ask | {"ready": 1})["buffering"] is True
    with pytest.raises(EnrollmentError, match="update_malformed"):  # a base the run has not reached
        agents[1].request("learn_task", "/v1/learn/task", ask | {"ready": 2})
    assert [p.device_id for p in services.learning._store.pending("run-b")] == ["dev-0"]


def test_a_ready_update_older_than_max_staleness_is_withdrawn_and_refused_as_stale(hub: HubParts) -> None:
    services = hub.services
    agents = verified_agents(hub, 3)
    services.learning.start("run-s", _settings(epsilon=0.0, max_staleness=2), [a.device_id for a in agents],
                            actor="op")
    ask = {"run_id": "run-s"}
    assert agents[0].request("learn_task", "/v1/learn/task", ask | {"ready": 1})["buffering"] is True
    store = services.learning._store
    run = store.get("run-s")
    assert run is not None and store.commit_step(next_row(run, version=3), [])  # three rounds went by
    with pytest.raises(EnrollmentError, match="update_stale"):  # trained on version 0, the run is at 3 > 0 + 2
        agents[0].request("learn_task", "/v1/learn/task", ask | {"ready": 1})
    assert store.pending("run-s") == []  # the marker is withdrawn: the device trains on the current model
    assert agents[0].request("learn_task", "/v1/learn/task", ask | {"ready": 2})["buffering"] is True  # 3 - 1 <= 2


def test_secure_fedbuff_settings() -> None:
    assert _settings().secure and _settings().strategy == "fedbuff"
    for aggregator in ("median", "trimmed_mean"):  # robust rules need plaintext updates
        with pytest.raises(ConfigError):
            _settings(aggregator=aggregator)
    for buffer_size in (1, 2):  # a secure round of fewer than 3 would let members subtract each other out
        with pytest.raises(ConfigError):
            _settings(buffer_size=buffer_size)
    with pytest.raises(ConfigError):
        _settings(buffer_size=4, min_participants=5)
    with pytest.raises(ConfigError):
        _settings(clip_norm=None)
    assert not _settings(secure=False, epsilon=0.0, clip_norm=None, buffer_size=2).secure  # plaintext: any K
