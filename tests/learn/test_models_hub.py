"""The hub's model registry: artifacts signed inside the key store, versioned, audited; ``iotguard models``."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from iotguard.audit import AuditEvent
from iotguard.cli.main import main
from iotguard.clock import FixedClock
from iotguard.errors import ConfigError, IntegrityError, MalformedError
from iotguard.hub.services.models import ModelService
from iotguard.hub.stores.models import MemoryModelStore
from iotguard.keys.software import SoftwareKeyStore
from iotguard.learn import Model, verify_artifact
from iotguard.learn.data import synthetic_digits
from iotguard.learn.model import accuracy, sgd

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


class _Events:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def _service(tmp_path: Path) -> tuple[ModelService, _Events]:
    events = _Events()
    keys = SoftwareKeyStore(tmp_path / "keys", device_binding=b"hub key store binding 0001")
    return ModelService(MemoryModelStore(), keys, events, FixedClock(T0)), events


def _trained() -> tuple[Model, list[np.ndarray], np.ndarray, np.ndarray]:
    data = synthetic_digits(speakers=2, per_class=10, features=8, seed=0)
    model = Model(features=8, classes=10)
    params = sgd(model, model.initial(0), data.x, data.y, epochs=10, batch_size=10, lr=0.1,
                 rng=np.random.default_rng(0))
    return model, params, data.x, data.y


def test_published_model_verifies_with_the_hub_key_and_runs_on_the_device(tmp_path: Path) -> None:
    service, events = _service(tmp_path)
    model, params, x, y = _trained()
    first = service.publish("digits", model, params, metrics={"accuracy": 0.8}, source="run-1", actor="alice")
    second = service.publish("digits", model, params, metrics={"accuracy": 0.9}, source="run-2", actor="alice")
    assert (first.version, second.version) == (1, 2)
    on_device = verify_artifact(service.get("digits").artifact, service.signing_key())
    assert on_device.version == 2 and on_device.metrics == {"accuracy": 0.9}
    assert accuracy(on_device.model, on_device.parameters, x, y) == pytest.approx(accuracy(model, params, x, y),
                                                                                  abs=0.02)
    assert [(e.type, e.subject, e.details["version"]) for e in events.events] == [
        ("model.published", "digits", 1), ("model.published", "digits", 2)]


def test_registry_refuses_bad_names_and_unknown_models(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    model, params, _, _ = _trained()
    with pytest.raises(MalformedError):
        service.publish("../../etc", model, params, metrics={}, source="x", actor="alice")
    with pytest.raises(ConfigError) as e:
        service.get("nothing")
    assert e.value.code == "unknown_model"


class _Lagging(MemoryModelStore):
    """A replica whose latest version lags: every add collides with a version another hub published."""

    def latest_version(self, name: str) -> int:
        return 0


def test_publisher_losing_every_race_gets_an_error_not_an_overwrite(tmp_path: Path) -> None:
    store = _Lagging()
    keys = SoftwareKeyStore(tmp_path / "keys", device_binding=b"hub key store binding 0001")
    service = ModelService(store, keys, _Events(), FixedClock(T0))
    model, params, _, _ = _trained()
    service.publish("digits", model, params, metrics={}, source="x", actor="alice")
    with pytest.raises(IntegrityError):
        service.publish("digits", model, params, metrics={}, source="y", actor="alice")
    kept = store.get("digits", 1)
    assert kept is not None and kept.source == "x"


def test_cli_publishes_lists_shows_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{tmp_path / "hub"}"\n')
    cfg = ["--config", str(conf)]
    model, params, x, _ = _trained()
    np.savez(tmp_path / "params.npz", *params)
    assert main(["models", "publish", *cfg, "digits", str(tmp_path / "params.npz"), "--features", "8",
                 "--classes", "10", "--metric", "accuracy=0.91"]) == 0
    published = json.loads(capsys.readouterr().out)
    assert (published["name"], published["version"], published["parameters"]) == ("digits", 1, 90)
    assert main(["models", "ls", *cfg, "--json"]) == 0
    assert [(m["name"], m["version"]) for m in json.loads(capsys.readouterr().out)] == [("digits", 1)]
    assert main(["models", "show", *cfg, "digits"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert main(["models", "export", *cfg, "digits", str(tmp_path / "digits.igm")]) == 0
    artifact = verify_artifact((tmp_path / "digits.igm").read_bytes(), base64.b64decode(shown["signing_key"]))
    assert np.array_equal(artifact.predict(x), model.predict(params, x))
    assert main(["models", "show", *cfg, "nothing"]) == 1
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert main(["models", "publish", *cfg, "digits", str(tmp_path / "bad.npz"), "--features", "8",
                 "--classes", "10"]) == 1
    assert "malformed" in capsys.readouterr().err


def test_learn_cli_refuses_a_run_without_eligible_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{tmp_path / "hub"}"\n')
    cfg = ["--config", str(conf)]
    # An unknown device has no affirming posture: it is not enrolled, so the run cannot start.
    assert main(["learn", "start", *cfg, "run-1", "--model", "digits", "--features", "8", "--classes", "10",
                 "--device", "ghost-1", "--device", "ghost-2"]) == 1
    assert "0 eligible devices" in capsys.readouterr().err
    assert main(["learn", "ls", *cfg]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["learn", "status", *cfg, "run-1"]) == 1
    assert "unknown_run" in capsys.readouterr().err
    assert main(["learn", "stop", *cfg, "run-1"]) == 1
    capsys.readouterr()
    assert main(["learn", "contributions", *cfg, "--device", "ghost-1"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_learn_start_is_secure_by_default_and_plaintext_needs_the_loud_unsafe_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{tmp_path / "hub"}"\n')
    base = ["learn", "start", "--config", str(conf), "run-1", "--model", "digits", "--features", "8", "--classes",
            "10", "--device", "ghost-1"]
    # Robust aggregators and compression need plaintext updates: without the flag the run is refused before
    # anything starts; FedBuff is secure too (ADR 1307): it fails only for want of devices (3 for its buffer).
    assert main([*base, "--aggregator", "median"]) == 1
    err = capsys.readouterr().err
    assert "secure by default" in err and "--unsafe-plaintext" in err
    assert main([*base, "--compression", "topk+q8"]) == 1
    assert "--unsafe-plaintext" in capsys.readouterr().err
    assert main([*base, "--strategy", "fedbuff", "--buffer-size", "3"]) == 1
    err = capsys.readouterr().err
    assert "UNSAFE" not in err and "0 eligible devices, the run needs 3" in err
    # With it, the run would take plaintext updates, and says so loudly (here it then finds no eligible device).
    assert main([*base, "--strategy", "fedbuff", "--unsafe-plaintext"]) == 1
    err = capsys.readouterr().err
    assert "UNSAFE" in err and "plaintext" in err and "0 eligible devices" in err
    # The default is a valid secure run (clip norm 1.0, 3 participants): it fails only for want of devices.
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "UNSAFE" not in err and "0 eligible devices" in err
