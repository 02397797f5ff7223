"""Models through the firmware-update channel (ADR 1303): the operator publishes a trained model as a TUF target
of the device model's role (offline release key); an agent holding the fleet's TUF root fetches it with
``tuf.ngclient`` over its device channel, checks the artifact's own signature too, and runs it. Whatever TUF does not
verify is refused; a model the signed metadata does not list is never run, and such an agent never falls back to the
hub-signed ``learn_model`` answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from iotguard.agent.firmware import FirmwareUpdateClient
from iotguard.agent.learning_loop import LearningLoop
from iotguard.hub.policy_store import save_posture
from iotguard.hub.services.learning import RunSettings
from iotguard.hub.stores.firmware import firmware_files
from iotguard.learn.artifact import ModelArtifact
from iotguard.learn.data import partition, split_train_test, synthetic_digits
from iotguard.privacy import ConsentState
from iotguard.updates import ModelTarget
from tests.updates.hubside import HUB_MODEL, HubFirmware, firmware_hub

FEATURES = 24


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[HubFirmware]:
    yield from firmware_hub(tmp_path)


def _no_fallback(*_args: object, **_kwargs: object) -> ModelArtifact:
    raise AssertionError("a device with a trusted TUF root must not use learn_model")


def _loops(repo: HubFirmware, run_id: str, n: int = 3) -> list[LearningLoop]:
    """Agents of thermo-1 that trust the fleet's TUF root, enrolled in ``run_id`` (completed after one round)."""
    hub = repo.hub
    train, _ = split_train_test(synthetic_digits(speakers=3, per_class=20, features=FEATURES, seed=3), 0.25, 3)
    loops = []
    for i, p in enumerate(partition(train, 1, seed=3)[:n]):
        agent = hub.agent(f"dev-{i}", model=HUB_MODEL)
        FirmwareUpdateClient.trust(agent.dir, repo.root)
        posture = hub.services.posture.posture.update(agent.device_id, trust_tier="verified")
        save_posture(hub.store.engine, [posture], now=hub.services.clock.now())
        loop = LearningLoop(agent, run_id, (p.x, p.y), poll_s=0.0, device_model=HUB_MODEL)
        loop._learner.fetch_model = _no_fallback  # type: ignore[method-assign]
        loops.append(loop)
    settings = RunSettings("digits", FEATURES, 10, rounds=1, min_participants=n)
    hub.services.learning.start(run_id, settings, [loop.agent.device_id for loop in loops], actor="alice")
    return loops


def _drive(loops: list[LearningLoop], turns: int = 200,
           until: tuple[str, ...] = ("done", "refused", "inferring")) -> None:
    """Step every loop until each is in a state of ``until`` (at most ``turns`` turns)."""
    for _ in range(turns):
        for loop in loops:
            loop.step()
        if all(loop.state in until for loop in loops):
            return


def _publish_tuf(repo: HubFirmware, name: str = "digits", version: int | None = None) -> ModelTarget:
    """What ``iotguard models publish-tuf`` does, with the device model's offline release key."""
    services = repo.hub.services
    record = services.models.get(name, version)
    target = ModelTarget.for_artifact(HUB_MODEL, record.name, record.version, record.artifact,
                                      signing_key=services.models.signing_key(),
                                      endorsement=services.models.endorsement())
    services.firmware.publish_model(target, record.artifact, model_signer=repo.model_key, actor="test")
    return target


def _stored_target(repo: HubFirmware) -> str:
    (path,) = [p for p in repo.hub.services.firmware._files.load() if p.endswith(".igm")]
    return path


def test_model_published_as_tuf_target_is_fetched_through_tuf_and_run(repo: HubFirmware,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    loops = _loops(repo, "run-tuf")
    _drive(loops, 60, until=("fetching",))  # the run completes; with no TUF target the devices wait
    assert repo.hub.services.learning.status("run-tuf")["status"] == "completed"
    # the run published v1 in the registry, but it is not a TUF target yet: the devices wait, run nothing
    assert [loop.state for loop in loops] == ["fetching"] * 3 and all(loop.artifact is None for loop in loops)
    assert "waiting: model digits is not in the signed TUF metadata of thermo-1" in capsys.readouterr().out
    target = _publish_tuf(repo)
    assert target.path == "thermo-1/digits-1.igm"
    assert [t.version for t in repo.hub.services.firmware.model_targets(HUB_MODEL)] == [1]
    assert [r.version for r in repo.hub.services.firmware.releases(HUB_MODEL)] == []  # models are not firmware
    loops[0].agent.attach_privacy("mic-1", ConsentState(loops[0].agent.device_id))
    loops[0].output_field = "digit"
    _drive(loops)
    assert [loop.state for loop in loops] == ["inferring", "done", "done"]
    assert all(loop.delivery == "tuf" and loop.artifact is not None and loop.artifact.version == 1 for loop in loops)
    loops[0].step()
    assert loops[0].reported == 1  # inference ran on the device; one output left through the data contract
    out = capsys.readouterr().out
    assert "learning: model digits v1 verified via tuf" in out and "outputs (digit)" in out


def test_model_target_tampered_on_the_hub_is_refused_by_tuf(repo: HubFirmware,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A compromised hub (or database) flips one byte of the stored model target: TUF's hash check refuses it."""
    loops = _loops(repo, "run-tamper")
    _drive(loops, 60, until=("fetching",))  # the run completes; with no TUF target the devices wait
    _publish_tuf(repo)
    path = _stored_target(repo)
    body = bytearray(repo.hub.services.firmware.file(path) or b"")
    body[len(body) // 2] ^= 0x01
    with repo.hub.store.engine.begin() as conn:
        changed = conn.execute(update(firmware_files).where(firmware_files.c.path == path).values(body=bytes(body)))
        assert changed.rowcount == 1
    _drive(loops)
    assert [loop.state for loop in loops] == ["refused"] * 3
    assert all(loop.artifact is None for loop in loops)  # nothing TUF did not verify can run
    assert "learning: model digits refused via tuf: TUF refused the model" in capsys.readouterr().out


def test_model_missing_from_signed_metadata_is_never_run(repo: HubFirmware,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The hub stores a model's bytes where a target would be, but no signed metadata lists it: never run, and the
    device does not fall back to the hub-signed ``learn_model`` answer."""
    loops = _loops(repo, "run-missing")
    _drive(loops, 60, until=("fetching",))  # the run completes; with no TUF target the devices wait
    record = repo.hub.services.models.get("digits")
    bogus = f"targets/{HUB_MODEL}/{record.sha256}.digits-1.igm"
    repo.hub.services.firmware._files.save({bogus: record.artifact})
    assert repo.hub.services.firmware.device_file(HUB_MODEL, bogus) == record.artifact  # served, but unsigned
    _drive(loops, 20)  # never leaves "fetching": each turn is the same refusal, 20 are as telling as 200
    assert [loop.state for loop in loops] == ["fetching"] * 3
    assert all(loop.artifact is None and loop.delivery == "" for loop in loops)
    assert "waiting: model digits is not in the signed TUF metadata" in capsys.readouterr().out
