"""The hub's training runs: rounds advance from device updates, only eligible devices take part, the result is
published signed; stale, duplicate, forged and oversized updates are refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from iotguard.audit import AuditEvent
from iotguard.clock import FixedClock
from iotguard.errors import ConfigError, MalformedError, PolicyDenied
from iotguard.hub.services.learning import LearningService, RunSettings
from iotguard.hub.services.models import ModelService
from iotguard.hub.stores.learning import MemoryLearningRunStore
from iotguard.hub.stores.models import MemoryModelStore
from iotguard.keys.software import SoftwareKeyStore
from iotguard.learn import Compression, LocalTrainingClient, Model, Participant, UpdateEncoder, verify_artifact
from iotguard.learn.compress import decode_update
from iotguard.learn.data import partition, split_train_test, synthetic_digits
from iotguard.learn.model import accuracy, flatten
from iotguard.learn.robust import coordinate_median, honest_envelope_bound

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
FEATURES = 24
DEVICES = [f"dev-{i}" for i in range(6)]


class _Events:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


class Fleet:
    def __init__(self, tmp_path: Path, blocked: set[str] | None = None) -> None:
        self.clock = FixedClock(T0)
        self.events = _Events()
        self.blocked = blocked or set()
        keys = SoftwareKeyStore(tmp_path / "keys", device_binding=b"hub key store binding 0001")
        self.models = ModelService(MemoryModelStore(), keys, self.events, self.clock)
        self.service = LearningService(MemoryLearningRunStore(), self.models, self.events, self.clock,
                                       eligible=lambda d: d not in self.blocked)
        train, self.test = split_train_test(synthetic_digits(speakers=6, per_class=20, features=FEATURES, seed=1),
                                            0.25, 1)
        parts = partition(train, 1, seed=1)
        self.devices = {d: Participant(d, d, LocalTrainingClient(self.service_model(), p.x, p.y, seed=i), seed=i)
                        for i, (d, p) in enumerate(zip(DEVICES, parts, strict=True))}

    @staticmethod
    def service_model() -> Model:
        return RunSettings("digits", FEATURES, 10).model()

    def train_and_submit(self, run_id: str, device_id: str) -> None:
        task = self.service.task(run_id, device_id)
        update = self.devices[device_id].train(task.parameters, task.version, task.round_config)
        self.service.submit(run_id, device_id, update.base_version, update.payload, update.num_examples)


def _settings(**kw: object) -> RunSettings:
    base: dict[str, object] = {"model_name": "digits", "features": FEATURES, "classes": 10, "rounds": 5,
                               "min_participants": 3, "deadline_s": 60.0,
                               "fit": {"epochs": 2, "batch_size": 16, "lr": 0.05}}
    return RunSettings(**(base | kw))  # type: ignore[arg-type]


def test_fedavg_run_trains_and_publishes_a_signed_model(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.service.start("run-1", _settings(), DEVICES, actor="alice")
    for round_ in range(5):
        for d in DEVICES:
            fleet.train_and_submit("run-1", d)
        status = fleet.service.status("run-1")
        assert status["version"] == round_ + 1 and status["pending_updates"] == 0
    assert status["status"] == "completed" and status["accepted_updates"] == 30
    model = fleet.models.get("digits")
    artifact = verify_artifact(model.artifact, fleet.models.signing_key())
    assert accuracy(artifact.model, artifact.parameters, fleet.test.x, fleet.test.y) > 0.8
    assert model.source == "learn:run-1"
    assert [e.type for e in fleet.events.events] == ["learning.started", *["learning.round"] * 5, "model.published",
                                                     "learning.completed"]
    assert fleet.service.contributions(["dev-2", "dev-99"]) == [
        {"run_id": "run-1", "status": "completed", "devices": ["dev-2"], "model": "digits", "model_versions": [1]}]
    assert fleet.service.contributions(["dev-99"]) == []
    with pytest.raises(PolicyDenied) as e:
        fleet.service.task("run-1", "dev-0")
    assert e.value.code == "run_not_running"


def test_device_whose_posture_is_not_affirming_does_not_take_part(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, blocked={"dev-5"})
    run = fleet.service.start("run-1", _settings(), DEVICES, actor="alice")
    assert "dev-5" not in run.devices and len(run.devices) == 5
    with pytest.raises(PolicyDenied) as e:
        fleet.service.task("run-1", "dev-5")
    assert e.value.code == "not_eligible"
    fleet.blocked.add("dev-4")  # quarantined mid-run: its updates stop counting
    with pytest.raises(PolicyDenied):
        fleet.train_and_submit("run-1", "dev-4")
    with pytest.raises(ConfigError):  # too few eligible devices: refused
        Fleet(tmp_path / "other", blocked=set(DEVICES[1:])).service.start("r", _settings(), DEVICES, actor="a")


def test_fedavg_round_closes_at_the_deadline_with_enough_answers(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.service.start("run-1", _settings(), DEVICES, actor="alice")
    for d in DEVICES[:3]:
        fleet.train_and_submit("run-1", d)
    assert fleet.service.tick("run-1").version == 0  # waits for the others until the deadline
    fleet.clock.advance(61)
    assert fleet.service.tick("run-1").version == 1
    with pytest.raises(MalformedError) as e:  # a straggler's update for the closed round is stale
        fleet.service.submit("run-1", "dev-5", 0, b"", 10)
    assert e.value.code == "update_stale"


def test_replayed_forged_and_oversized_updates_refused(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.service.start("run-1", _settings(max_update_norm=5.0), DEVICES, actor="alice")
    task = fleet.service.task("run-1", "dev-0")
    update = fleet.devices["dev-0"].train(task.parameters, task.version, task.round_config)
    fleet.service.submit("run-1", "dev-0", 0, update.payload, update.num_examples)
    with pytest.raises(MalformedError) as e:
        fleet.service.submit("run-1", "dev-0", 0, update.payload, update.num_examples)
    assert e.value.code == "update_duplicate"
    with pytest.raises(MalformedError) as e:
        fleet.service.submit("run-1", "dev-1", 0, update.payload[:-3], 10)
    assert e.value.code == "update_malformed"
    dims = Fleet.service_model().size()
    scaled = UpdateEncoder(dims).encode(np.full(dims, 100.0), Compression())
    with pytest.raises(MalformedError) as e:
        fleet.service.submit("run-1", "dev-1", 0, scaled, 10)
    assert e.value.code == "update_norm_exceeded"
    assert fleet.service.status("run-1")["pending_updates"] == 1


def test_fedbuff_run_steps_every_buffer_and_takes_stale_updates(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.service.start("run-1", _settings(strategy="fedbuff", buffer_size=3, rounds=100), DEVICES, actor="alice")
    slow_task = fleet.service.task("run-1", "dev-5")  # a straggler pulls version 0 ...
    for d in DEVICES[:3] * 2:
        fleet.train_and_submit("run-1", d)
    assert fleet.service.status("run-1")["version"] == 2
    slow = fleet.devices["dev-5"].train(slow_task.parameters, slow_task.version, slow_task.round_config)
    fleet.service.submit("run-1", "dev-5", slow.base_version, slow.payload, slow.num_examples)  # ... still counts
    assert fleet.service.status("run-1")["pending_updates"] == 1


def test_stopped_run_takes_nothing_and_publishes_nothing(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.service.start("run-1", _settings(), DEVICES, actor="alice")
    fleet.service.stop("run-1", actor="alice")
    with pytest.raises(PolicyDenied):
        fleet.train_and_submit("run-1", "dev-0")
    assert fleet.models.list() == [] and fleet.service.status("run-1")["status"] == "stopped"
    with pytest.raises(ConfigError):
        fleet.service.stop("run-1", actor="alice")


def test_poisoning_device_cannot_move_the_hubs_median_round_beyond_the_honest_envelope(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.service.start("run-1", _settings(aggregator="median", max_update_norm=10.0), DEVICES, actor="alice")
    start = flatten(fleet.service.task("run-1", "dev-0").parameters)
    honest = []
    for d in DEVICES[:5]:
        task = fleet.service.task("run-1", d)
        update = fleet.devices[d].train(task.parameters, task.version, task.round_config)
        honest.append(decode_update(update.payload, start.size))
        fleet.service.submit("run-1", d, 0, update.payload, update.num_examples)
    # The attacker scales the honest direction, reversed, to just under the hub's norm limit.
    evil = -honest[0] / np.linalg.norm(honest[0]) * 9.99
    fleet.service.submit("run-1", "dev-5", 0, UpdateEncoder(start.size).encode(evil, Compression()), 10)
    moved = flatten(fleet.service.task("run-1", "dev-0").parameters) - start
    clean = coordinate_median(honest)
    assert np.linalg.norm(moved - clean) <= honest_envelope_bound(honest, clean) + 1e-6
    assert np.linalg.norm(moved - clean) < 0.5 * np.linalg.norm(evil / 6)  # a mean would move by evil / 6


def test_compression_is_negotiated_per_round_and_a_mismatched_update_is_refused(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.service.start("run-c", _settings(compression="q8,topk+q8", topk_fraction=0.05, rounds=2), DEVICES,
                        actor="alice")
    dims = fleet.service_model().size()
    first = fleet.service.task("run-c", "dev-0")
    assert first.round_config.compression == Compression("q8", 0.05)
    # A device that sends float32 (or top-k) when the round asked for 8-bit is refused with a reason.
    delta = np.full(dims, 0.001)
    for wrong in (Compression("none"), Compression("topk+q8", 0.05)):
        with pytest.raises(MalformedError) as exc:
            fleet.service.submit("run-c", "dev-0", 0, UpdateEncoder(dims).encode(delta, wrong), 10)
        assert exc.value.code == "compression_mismatch"
    for d in DEVICES:
        fleet.train_and_submit("run-c", d)
    second = fleet.service.task("run-c", "dev-0")
    assert (second.version, second.round_config.compression) == (1, Compression("topk+q8", 0.05))
    # Top-k keeping more coordinates than the round's k is a mismatch too.
    with pytest.raises(MalformedError) as exc:
        fleet.service.submit("run-c", "dev-0", 1, UpdateEncoder(dims).encode(delta, Compression("topk+q8", 0.5)), 10)
    assert exc.value.code == "compression_mismatch"
    for d in DEVICES:
        fleet.train_and_submit("run-c", d)
    # Each applied round records the bytes each device sent, under the compression it asked for.
    rounds = [e for e in fleet.events.events if e.type == "learning.round"]
    assert [(e.details["version"], e.details["compression"], e.details["updates"]) for e in rounds] == [
        (1, "q8", 6), (2, "topk+q8", 6)]
    q8_bytes, topk_bytes = (e.details["bytes_per_device"] for e in rounds)
    assert q8_bytes == 17 + dims and topk_bytes == 17 + 5 * round(0.05 * dims)


def test_a_secure_run_refuses_any_compression() -> None:
    with pytest.raises(ConfigError):
        _settings(secure=True, clip_norm=1.0, compression="none,q8")


def test_each_device_gets_the_first_offered_compression_it_can_send_and_the_round_counts_them(
        tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.service.start("run-n", _settings(compression="topk+q8|q8|none", topk_fraction=0.05, rounds=1), DEVICES,
                        actor="alice")
    dims = fleet.service_model().size()
    can_send = {"dev-0": None, "dev-1": {"q8", "none"}, "dev-2": {"none"}, "dev-3": {"q8", "none"},
                "dev-4": None, "dev-5": {"q8", "topk+q8"}}
    limit = {"dev-5": dims}  # a narrow link: 8-bit dense (17 + dims bytes) does not fit, top-k 8-bit does
    expect = {"dev-0": "topk+q8", "dev-1": "q8", "dev-2": "none", "dev-3": "q8", "dev-4": "topk+q8",
              "dev-5": "topk+q8"}
    for d in DEVICES:
        task = fleet.service.task("run-n", d, can_send[d], limit.get(d, 0))
        assert task.round_config.compression.scheme == expect[d]
        update = fleet.devices[d].train(task.parameters, task.version, task.round_config)
        fleet.service.submit("run-n", d, update.base_version, update.payload, update.num_examples)
    (applied,) = [e for e in fleet.events.events if e.type == "learning.round"]
    assert applied.details["compression"] == "topk+q8|q8|none"
    assert applied.details["by_scheme"] == {"none": 1, "q8": 2, "topk+q8": 3}


def test_a_device_that_accepts_no_offered_compression_is_refused_with_a_reason(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.service.start("run-u", _settings(compression="topk+q8|q8"), DEVICES, actor="alice")
    with pytest.raises(PolicyDenied) as exc:
        fleet.service.task("run-u", "dev-0", {"none"})
    assert exc.value.code == "compression_unsupported"
    with pytest.raises(PolicyDenied) as exc:  # every offered update is larger than the device's limit
        fleet.service.task("run-u", "dev-0", None, 20)
    assert exc.value.code == "compression_unsupported"
