"""The agent learning by itself (``iotguard agent --learn``): one ``LearningLoop`` step per agent loop turn polls
the task, trains on local data, sends the update, fetches and verifies the model, and reports only outputs; a
tampered model is refused and never run; local data files are parsed strictly (no pickles)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from iotguard.agent.learning_loop import LearningLoop, load_local_data
from iotguard.clock import FixedClock
from iotguard.errors import ConfigError
from iotguard.hub.policy_store import save_posture
from iotguard.hub.services.learning import RunSettings
from iotguard.learn.data import partition, split_train_test, synthetic_digits
from iotguard.privacy import ConsentState
from tests.hub.conftest import HubParts, make_hub

FEATURES = 24


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubParts]:
    parts = make_hub(tmp_path)
    yield parts
    parts.store.engine.dispose()


def _loops(hub: HubParts, n: int, run_id: str) -> list[LearningLoop]:
    train, _ = split_train_test(synthetic_digits(speakers=max(3, n), per_class=20, features=FEATURES, seed=3), 0.25, 3)
    loops = []
    for i, p in enumerate(partition(train, 1, seed=3)[:n]):
        agent = hub.agent(f"dev-{i}")
        posture = hub.services.posture.posture.update(agent.device_id, trust_tier="verified")
        save_posture(hub.store.engine, [posture], now=hub.services.clock.now())
        # knows its device model but holds no TUF root (the hub has no firmware repository): hub-key delivery
        loops.append(LearningLoop(agent, run_id, (p.x, p.y), poll_s=0.0, device_model="thermo-1"))
    return loops


def _drive(loops: list[LearningLoop], turns: int = 200) -> None:
    for _ in range(turns):
        for loop in loops:
            loop.step()
        if all(loop.state in ("done", "refused", "inferring") for loop in loops):
            return


def test_agents_poll_train_fetch_verify_and_report_only_outputs(hub: HubParts,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    loops = _loops(hub, 3, "run-l")
    for loop in loops:
        loop.step()  # the run does not exist yet: a normal answer, the agent keeps polling
    assert [loop.state for loop in loops] == ["training"] * 3
    settings = RunSettings("digits", FEATURES, 10, rounds=3, min_participants=3,
                           fit={"epochs": 2, "batch_size": 16, "lr": 0.05})
    hub.services.learning.start("run-l", settings, [loop.agent.device_id for loop in loops], actor="alice")
    loops[0].agent.attach_privacy("mic-1", ConsentState(loops[0].agent.device_id))
    loops[0].output_field = "digit"
    _drive(loops)
    assert [loop.state for loop in loops] == ["inferring", "done", "done"]
    assert hub.services.learning.status("run-l")["status"] == "completed"
    assert all(loop.artifact is not None and loop.artifact.version == 1 for loop in loops)
    assert all(loop.delivery == "hub-key" for loop in loops)
    before = loops[0].reported
    loops[0].step()
    # one recognised digit a step went through the data contract (its inputs never do)
    assert loops[0].reported >= 1 and loops[0].reported - before <= 1
    out = capsys.readouterr().out
    assert "learning: model digits v1 verified via hub-key" in out and "outputs (digit)" in out


def test_a_device_late_for_its_secure_round_is_told_why_and_joins_the_next_by_itself(
        hub: HubParts, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The round's advertise phase closes without dev-3 (its deadline passed): dev-3's late step is refused
    ``409 wrong_phase`` (not ``400 malformed``); its agent leaves that round instead of rejoining it with new
    keys on every poll, and takes part in the next version's round; the run completes."""
    loops = _loops(hub, 4, "run-late")
    assert hub.services.aggregation is not None
    clock = FixedClock(hub.services.clock.now())
    monkeypatch.setattr(hub.services.aggregation, "clock", clock)  # the rounds' phase deadlines
    settings = RunSettings("digits", FEATURES, 10, rounds=2, min_participants=3, clip_norm=0.5, deadline_s=30,
                           secure=True, fit={"epochs": 1, "batch_size": 16, "lr": 0.05})
    hub.services.learning.start("run-late", settings, [loop.agent.device_id for loop in loops], actor="alice")
    advertised: list[str] = []
    for loop in loops:
        send = loop.agent.request

        def spy(action: str, path: str, body: dict, _send=send, _d=loop.agent.device_id):  # type: ignore[no-untyped-def]
            if action == "aggregate" and body.get("step") == "advertise":
                advertised.append(_d)
            return _send(action, path, body)

        monkeypatch.setattr(loop.agent, "request", spy)
    for loop in loops[:3]:
        loop.step()  # task, train, advertise
    clock.advance(31)  # dev-3 never came: the phase closes with three
    for _ in range(3):
        loops[3].step()
    out = capsys.readouterr().out
    assert "secure round: left (wrong_phase)" in out and "400 malformed" not in out
    assert advertised.count("dev-3") == 1  # it left the round; it did not rejoin it with fresh keys
    deadline = time.monotonic() + 120  # the loop paces secure steps 50 ms apart: drive until done, not N turns
    while not all(loop.state == "done" for loop in loops) and time.monotonic() < deadline:
        _drive(loops, turns=1)
    status = hub.services.learning.status("run-late")
    assert (status["status"], status["accepted_updates"]) == ("completed", 3 + 4), status
    assert advertised.count("dev-3") == 2  # the next version's round, by itself
    assert [loop.state for loop in loops] == ["done"] * 4


def test_tampered_model_artifact_is_refused_by_the_agent(hub: HubParts, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    loops = _loops(hub, 3, "run-t")
    settings = RunSettings("digits", FEATURES, 10, rounds=1, min_participants=3)
    hub.services.learning.start("run-t", settings, [loop.agent.device_id for loop in loops], actor="alice")
    models = hub.services.models
    real_get = models.get

    def tampered(name: str, version: int | None = None):  # type: ignore[no-untyped-def]
        record = real_get(name, version)
        flipped = bytearray(record.artifact)
        flipped[-3] ^= 0x01  # one bit of the parameters
        return replace(record, artifact=bytes(flipped))

    monkeypatch.setattr(models, "get", tampered)
    _drive(loops)
    assert [loop.state for loop in loops] == ["refused"] * 3
    assert all(loop.artifact is None for loop in loops)  # nothing that failed verification can run
    assert "learning: model digits refused" in capsys.readouterr().out


def test_local_data_is_parsed_strictly(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((4, 3)), y=np.array([0, 1, 2, 1]))
    x, y = load_local_data(good)
    assert x.shape == (4, 3) and y.dtype == np.int64
    cases = {"pickle": {"x": np.array([object()], dtype=object), "y": np.zeros(1, np.int64)},
             "extra": {"x": np.ones((2, 3)), "y": np.zeros(2, np.int64), "z": np.ones(1)},
             "shape": {"x": np.ones(3), "y": np.zeros(3, np.int64)},
             "rows": {"x": np.ones((2, 3)), "y": np.zeros(3, np.int64)},
             "nan": {"x": np.full((2, 3), np.nan), "y": np.zeros(2, np.int64)},
             "labels": {"x": np.ones((2, 3)), "y": np.array([0.5, 1.0])}}
    for name, arrays in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            load_local_data(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError):
        load_local_data(tmp_path / "junk.npz")
