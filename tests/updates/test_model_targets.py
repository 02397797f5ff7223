"""Trained models as TUF targets of a device model's role (ADR 1303): the repository, the hub's device file rules
and ``iotguard models publish-tuf``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from iotguard.cli.main import main
from iotguard.config import load_config
from iotguard.errors import MalformedError, RollbackError, UpdateRefused
from iotguard.hub.compose import build_hub_services
from iotguard.learn.model import Model
from iotguard.updates import ModelTarget, model_versions
from tests.updates.conftest import MODEL, OTHER_MODEL, Fleet
from tests.updates.hubside import HUB_MODEL, HubFirmware, firmware_hub

KEY, ENDORSEMENT = b"k" * 32, b"e" * 64


def _target(name: str, version: int, artifact: bytes, model: str = MODEL) -> ModelTarget:
    return ModelTarget.for_artifact(model, name, version, artifact, signing_key=KEY, endorsement=ENDORSEMENT)


def test_model_target_is_published_in_the_device_models_role_beside_its_firmware(fleet: Fleet) -> None:
    fleet.publish(MODEL, 2)
    artifact = b"IGM1 model bytes"
    target = _target("digits", 3, artifact)
    fleet.repo.publish_model(target, artifact, model_signer=fleet.model_signers[MODEL],
                             online_signer=fleet.online_signer, now=datetime.now(tz=UTC))
    assert fleet.repo.model_targets(MODEL) == [target]
    assert [r.version for r in fleet.repo.releases(MODEL)] == [2]  # firmware listing unchanged
    stored = f"targets/{MODEL}/{hashlib.sha256(artifact).hexdigest()}.digits-3.igm"
    assert fleet.repo.files()[stored] == artifact
    assert model_versions(["thermo/digits-3.igm", "thermo/digits-x.igm", "thermo/digits-a-1.igm",
                           "thermo/digits-03.igm", "thermo/digits-4.img"], MODEL, "digits") == [3]
    with pytest.raises(RollbackError):  # never the same or an older version again
        fleet.repo.publish_model(_target("digits", 3, artifact), artifact, model_signer=fleet.model_signers[MODEL],
                                 online_signer=fleet.online_signer, now=datetime.now(tz=UTC))
    with pytest.raises(MalformedError):  # bytes that are not the target's
        fleet.repo.publish_model(_target("digits", 4, artifact), artifact + b"x",
                                 model_signer=fleet.model_signers[MODEL], online_signer=fleet.online_signer,
                                 now=datetime.now(tz=UTC))
    assert fleet.repo.model_targets(OTHER_MODEL) == []


def test_model_target_custom_field_is_parsed_strictly() -> None:
    target = _target("digits", 1, b"abc")
    again = ModelTarget.from_target(target.path, target.length, {"sha256": target.sha256}, target.custom())
    assert again == target
    bad = [{**target.custom(), "extra": 1}, {**target.custom(), "kind": "firmware"},
           {**target.custom(), "version": 2}, {**target.custom(), "signing_key": "00"}, "not a dict"]
    for custom in bad:
        with pytest.raises(MalformedError):
            ModelTarget.from_target(target.path, target.length, {"sha256": target.sha256}, custom)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[HubFirmware]:
    yield from firmware_hub(tmp_path)


def test_device_reads_only_its_own_models_targets(repo: HubFirmware) -> None:
    firmware = repo.hub.services.firmware
    artifact = b"model for thermo-1"
    target = _target("digits", 1, artifact, model=HUB_MODEL)
    firmware.publish_model(target, artifact, model_signer=repo.model_key, actor="test")
    path = f"targets/{HUB_MODEL}/{target.sha256}.digits-1.igm"
    assert firmware.device_file(HUB_MODEL, path) == artifact
    with pytest.raises(UpdateRefused) as refused:
        firmware.device_file("camera-2", path)
    assert refused.value.code == "update_wrong_model"
    with pytest.raises(MalformedError):
        firmware.device_file(HUB_MODEL, f"targets/{HUB_MODEL}/{target.sha256}.../x-1.igm")


def test_cli_publishes_a_registry_model_as_a_tuf_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.updates.conftest import cli_repository

    cfg, keys, _root = cli_repository(tmp_path, monkeypatch, MODEL)
    params = tmp_path / "params.npz"
    np.savez(params, *Model(features=3, classes=2).initial(0))
    assert main(["models", "publish", *cfg, "digits", str(params), "--features", "3", "--classes", "2"]) == 0
    capsys.readouterr()
    assert main(["models", "publish-tuf", *cfg, "digits", "--device-model", MODEL, "--keys", str(keys)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["target"], out["version"]) == (f"{MODEL}/digits-1.igm", 1)
    services = build_hub_services(load_config(Path(cfg[1])).hub)
    try:
        (target,) = services.firmware.model_targets(MODEL)
        assert target.sha256 == services.models.get("digits").sha256
        assert target.signing_key == services.models.signing_key()
    finally:
        services.store.engine.dispose()
