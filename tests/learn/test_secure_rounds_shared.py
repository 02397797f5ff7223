"""A secure run's rounds are shared by hub processes (ADR 1304): two learning services over one database
(SQLite, PostgreSQL), devices' task and aggregate steps alternating between them, start one round per model
version, apply each sum once and complete; a failed round is replaced once and its retry charges no subject
again."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from iotguard.agent.secagg import RoundClient
from iotguard.analytics.ledger import SubjectLedger
from iotguard.audit import AuditEvent
from iotguard.clock import FixedClock
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.services.aggregation import SecureAggregationService
from iotguard.hub.services.learning import LearningService, RunSettings, Task
from iotguard.hub.services.models import ModelService
from iotguard.hub.stores.aggregation_rounds import SqlRoundStore
from iotguard.hub.stores.learning import SqlLearningRunStore
from iotguard.hub.stores.models import SqlModelStore
from iotguard.hub.stores.subject_ledger import SqlSubjectLedgerStore
from iotguard.identity import VerifiedRequest
from iotguard.keys.software import SoftwareKeyStore
from iotguard.learn import LocalTrainingClient, Participant
from iotguard.learn.data import partition, synthetic_digits
from iotguard.learn.distributed import discrete_gaussian

T0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
FEATURES = 12
DEVICES = [f"dev-{i}" for i in range(5)]
ROUNDS = 2


class _Events:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    def count(self, action: str) -> int:
        return sum(e.type == action for e in self.events)


@dataclass
class Hub:
    """One hub process's services over the shared database (its own caches, its own audit sink)."""

    learning: LearningService
    aggregation: SecureAggregationService
    ledger: SubjectLedger
    events: _Events


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    e = make_engine(url)
    migrate(e)
    yield e
    e.dispose()


def _hubs(engine: Engine, tmp_path: Path, clock: FixedClock) -> list[Hub]:
    keys = SoftwareKeyStore(tmp_path / "keys", device_binding=b"hub key store binding 0001")
    hubs = []
    for _ in range(2):
        events = _Events()
        ledger = SubjectLedger(SqlSubjectLedgerStore(engine), 50.0, timedelta(days=1))
        aggregation = SecureAggregationService(events, clock, SqlRoundStore(engine))
        models = ModelService(SqlModelStore(engine), keys, events, clock)
        learning = LearningService(SqlLearningRunStore(engine), models, events, clock, eligible=lambda _d: True)
        learning.attach_privacy(aggregation, ledger, lambda _d: None)
        hubs.append(Hub(learning, aggregation, ledger, events))
    return hubs


def _settings(rounds: int = ROUNDS) -> RunSettings:
    return RunSettings("digits", FEATURES, 10, rounds=rounds, min_participants=3, clip_norm=0.5, secure=True,
                       epsilon=4.0, deadline_s=30, fit={"epochs": 1, "batch_size": 16, "lr": 0.05})


def _sender(hubs: list[Hub], device: str) -> Any:
    pick = cycle(hubs)

    def send(body: dict[str, Any]) -> dict[str, Any]:
        req = VerifiedRequest("aggregate", device, T0, secrets.token_bytes(16), body, b"")
        return next(pick).aggregation.device_step(req)

    return send


def _client(hubs: list[Hub], device: str, task: Task, trainer: Participant) -> RoundClient:
    assert task.plan is not None
    update = trainer.train(task.parameters, task.version, task.round_config)
    return RoundClient(_sender(hubs, device), task.secure_round, task.plan.encode(update.vector, discrete_gaussian))


def _trainers() -> dict[str, Participant]:
    parts = partition(synthetic_digits(speakers=5, per_class=6, features=FEATURES, seed=3), 1, seed=3)
    model = _settings().model()
    return {d: Participant(d, d, LocalTrainingClient(model, p.x, p.y, seed=i), seed=i)
            for i, (d, p) in enumerate(zip(DEVICES, parts, strict=True))}


def test_two_hub_processes_run_one_secure_round_per_version_and_apply_each_sum_once(
        engine: Engine, tmp_path: Path) -> None:
    clock = FixedClock(T0)
    a, b = hubs = _hubs(engine, tmp_path, clock)
    trainers = _trainers()
    a.learning.start("run-x", _settings(), DEVICES, actor="op")
    for version in range(ROUNDS):
        # each device asks a different process for its task than its neighbour, and alternates for its steps
        tasks = {d: hubs[i % 2].learning.task("run-x", d) for i, d in enumerate(DEVICES)}
        assert {t.version for t in tasks.values()} == {version}
        assert len({t.secure_round for t in tasks.values()}) == 1  # one round for the version, in both
        clients = {d: _client(hubs[i % 2:] + hubs[:i % 2], d, tasks[d], trainers[d]) for i, d in enumerate(DEVICES)}
        for _ in range(6):
            phases = {c.step() for c in clients.values()}
        assert phases == {"done"}
        # both processes see the sum at once; each tries to apply it, the run's CAS lets one
        assert a.learning.tick("run-x").version == b.learning.tick("run-x").version == version + 1
    status = b.learning.status("run-x")
    assert (status["status"], status["version"], status["accepted_updates"]) == ("completed", ROUNDS,
                                                                                  ROUNDS * len(DEVICES))
    assert a.events.count("learning.secure_round") + b.events.count("learning.secure_round") == ROUNDS
    assert a.events.count("learning.round") + b.events.count("learning.round") == ROUNDS  # each sum applied once
    spent = _settings().calibrated().dp().epsilon_after(ROUNDS)
    for d in DEVICES:  # each version charged once per subject, whichever process started its round
        assert sum(line.federated for line in a.ledger.statement(d)) == pytest.approx(spent, abs=ROUNDS * 1e-6)


def test_a_failed_round_is_replaced_once_and_its_retry_charges_no_subject_again(
        engine: Engine, tmp_path: Path) -> None:
    clock = FixedClock(T0)
    a, b = hubs = _hubs(engine, tmp_path, clock)
    trainers = _trainers()
    a.learning.start("run-f", _settings(rounds=1), DEVICES, actor="op")
    first = a.learning.task("run-f", "dev-0")
    one_round = _settings(rounds=1).calibrated().dp().epsilon_after(1)
    charged = {d: sum(line.federated for line in a.ledger.statement(d)) for d in DEVICES}
    assert charged == {d: pytest.approx(one_round, abs=1e-6) for d in DEVICES}
    # two devices advertise, the others never come: the advertise phase times out with too few
    for d in DEVICES[:2]:
        _client(hubs, d, first, trainers[d]).step()
    clock.advance(31)
    assert b.aggregation.status(first.secure_round, actor="op")["phase"] == "failed"
    # both processes see it failed; the next tasks, from either, bind one replacement round
    retry = {d: hubs[i % 2].learning.task("run-f", d) for i, d in enumerate(DEVICES)}
    assert len({t.secure_round for t in retry.values()}) == 1
    assert retry["dev-0"].secure_round != first.secure_round and retry["dev-0"].version == 0
    assert a.events.count("learning.secure_round") + b.events.count("learning.secure_round") == 2
    for d in DEVICES:  # the failed round released nothing: its retry is not charged again
        assert sum(line.federated for line in b.ledger.statement(d)) == pytest.approx(one_round, abs=1e-6), d
    clients = {d: _client(hubs, d, retry[d], trainers[d]) for d in DEVICES}
    for _ in range(6):
        phases = {c.step() for c in clients.values()}
    assert phases == {"done"}
    assert b.learning.tick("run-f").status == "completed"
    for d in DEVICES:
        assert sum(line.federated for line in a.ledger.statement(d)) == pytest.approx(one_round, abs=1e-6), d


def _buffered_run(hubs: list[Hub], rounds: int) -> tuple[RunSettings, dict[str, Any]]:
    """A secure FedBuff run (K = 3) started on the first process; dev-0 .. dev-3 pulled version 0 (from either
    process) and trained: their held updates."""
    settings = RunSettings("digits", FEATURES, 10, strategy="fedbuff", buffer_size=3, rounds=rounds,
                           min_participants=3, clip_norm=0.5, secure=True, epsilon=4.0, deadline_s=30,
                           fit={"epochs": 1, "batch_size": 16, "lr": 0.05})
    hubs[0].learning.start("run-q", settings, DEVICES, actor="op")
    trainers, held = _trainers(), {}
    for i, d in enumerate(DEVICES[:4]):
        task = hubs[i % 2].learning.task("run-q", d)
        assert (task.buffered, task.secure_round, task.version) == (True, "", 0)
        held[d] = trainers[d].train(task.parameters, 0, task.round_config).vector
    return settings, held


def _weighted_client(hubs: list[Hub], device: str, task: Task, update: Any) -> RoundClient:
    assert task.plan is not None
    return RoundClient(_sender(hubs, device), task.secure_round,
                       task.plan.encode(task.staleness_weight * update, discrete_gaussian))


def test_ready_devices_reported_to_two_hub_processes_fill_one_buffer_bound_and_applied_once(
        engine: Engine, tmp_path: Path) -> None:
    """Secure FedBuff (ADR 1307): ready markers sent to either process fill one buffer in the shared store."""
    clock = FixedClock(T0)
    a, b = hubs = _hubs(engine, tmp_path, clock)
    settings, held = _buffered_run(hubs, rounds=2)
    assert a.learning.task("run-q", "dev-0", ready=1).buffering  # to process a
    assert b.learning.task("run-q", "dev-1", ready=1).buffering  # to process b: two of three
    assert a.learning._store.secure_round("run-q", 0) is None
    third = a.learning.task("run-q", "dev-2", ready=1)  # the buffer is full: a binds the round
    assert third.secure_round and not third.buffering
    fourth = b.learning.task("run-q", "dev-3", ready=1)  # one buffer too many: it waits for the next
    assert fourth.buffering and not fourth.secure_round
    tasks = {d: hubs[(i + 1) % 2].learning.task("run-q", d, ready=1) for i, d in enumerate(DEVICES[:3])}
    assert {t.secure_round for t in tasks.values()} == {third.secure_round}  # one round, in both processes
    assert {t.staleness_weight for t in tasks.values()} == {1.0}
    clients = {d: _weighted_client(hubs[i % 2:] + hubs[:i % 2], d, t, held[d])
               for i, (d, t) in enumerate(tasks.items())}
    for _ in range(6):
        phases = {c.step() for c in clients.values()}
    assert phases == {"done"}
    assert a.learning.tick("run-q").version == b.learning.tick("run-q").version == 1
    assert a.events.count("learning.secure_round") + b.events.count("learning.secure_round") == 1
    assert a.events.count("learning.round") + b.events.count("learning.round") == 1  # applied once
    # the members' ready markers were consumed with the step; dev-3's stays for the next buffer
    assert [(p.device_id, p.base_version) for p in b.learning._store.pending("run-q")] == [("dev-3", 0)]
    one_round = settings.calibrated().dp().epsilon_after(1)
    for d in DEVICES:
        expected = one_round if d in tasks else 0.0
        assert sum(line.federated for line in b.ledger.statement(d)) == pytest.approx(expected, abs=1e-6), d


def test_a_failed_buffered_round_leaves_its_members_ready_and_its_retry_charges_no_subject_again(
        engine: Engine, tmp_path: Path) -> None:
    clock = FixedClock(T0)
    a, b = hubs = _hubs(engine, tmp_path, clock)
    settings, held = _buffered_run(hubs, rounds=1)
    for i, d in enumerate(DEVICES[:3]):
        first = hubs[i % 2].learning.task("run-q", d, ready=1)
    one_round = settings.calibrated().dp().epsilon_after(1)
    _weighted_client(hubs, "dev-0", first, held["dev-0"]).step()  # one advertises, the others never come
    clock.advance(31)
    assert b.aggregation.status(first.secure_round, actor="op")["phase"] == "failed"
    retry = {d: hubs[i % 2].learning.task("run-q", d, ready=1) for i, d in enumerate(DEVICES[:4])}
    assert retry["dev-3"].buffering  # the failed round's members were still ready: they fill the new buffer
    rounds = {t.secure_round for d, t in retry.items() if d != "dev-3"}
    assert len(rounds) == 1 and first.secure_round not in rounds
    for d in DEVICES:  # nothing was released: the replacement charged nobody again
        expected = one_round if d in DEVICES[:3] else 0.0
        assert sum(line.federated for line in a.ledger.statement(d)) == pytest.approx(expected, abs=1e-6), d
    clients = [_weighted_client(hubs, d, retry[d], held[d]) for d in DEVICES[:3]]
    for _ in range(6):
        phases = {c.step() for c in clients}
    assert phases == {"done"} and b.learning.tick("run-q").status == "completed"


def test_a_process_that_loses_the_bind_with_another_member_set_charges_nobody(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes select different members for one version (b still sees dev-4 eligible, a no longer does);
    a binds first. b, whose bind then loses, must not charge dev-4 for a round dev-4 is not in."""
    clock = FixedClock(T0)
    a, b = _hubs(engine, tmp_path, clock)
    a.learning._eligible = lambda d: d != "dev-4"  # a's posture view: dev-4 is no longer affirming
    b.learning.start("run-r", _settings(rounds=1), DEVICES, actor="op")
    real_bind = b.learning._store.bind_secure_round
    won: list[str] = []

    def bind_after_a(binding: Any, replaces: str = "") -> bool:
        if not won:  # between b's selection and b's bind, a binds the version's round with its own members
            won.append(a.learning.task("run-r", "dev-0").secure_round)
        return real_bind(binding, replaces)

    monkeypatch.setattr(b.learning._store, "bind_secure_round", bind_after_a)
    task = b.learning.task("run-r", "dev-1")
    assert task.secure_round == won[0]  # b hands out a's round
    bound = a.learning._store.secure_round("run-r", 0)
    assert bound is not None and "dev-4" not in bound.members
    one_round = _settings(rounds=1).calibrated().dp().epsilon_after(1)
    for d in DEVICES:
        expected = one_round if d in bound.members else 0.0
        assert sum(line.federated for line in b.ledger.statement(d)) == pytest.approx(expected, abs=1e-6), d
    assert a.events.count("learning.secure_round") + b.events.count("learning.secure_round") == 1


def test_a_charge_refused_after_the_bind_replaces_the_round_at_once_without_that_subject(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a's selection and its charge a central query spends dev-2's whole budget: the charge is refused
    (nothing spent), and a binds a replacement without dev-2 under the same key before any round starts."""
    clock = FixedClock(T0)
    a, b = _hubs(engine, tmp_path, clock)
    a.learning.start("run-c", _settings(rounds=1), DEVICES, actor="op")
    real_bind = a.learning._store.bind_secure_round
    binds: list[str] = []

    def bind_then_spend(binding: Any, replaces: str = "") -> bool:
        binds.append(binding.round_id)
        if len(binds) == 1:  # a query on the other process spends dev-2's budget meanwhile
            b.ledger.charge_all(["dev-2"], b.ledger.remaining("dev-2", T0), "central", "query", T0)
        return real_bind(binding, replaces)

    monkeypatch.setattr(a.learning._store, "bind_secure_round", bind_then_spend)
    task = a.learning.task("run-c", "dev-0")
    assert len(binds) == 2 and task.secure_round == binds[1]  # the refused round was replaced at once
    bound = b.learning._store.secure_round("run-c", 0)
    assert bound is not None and bound.round_id == binds[1] and bound.attempt == 2
    assert bound.members == ("dev-0", "dev-1", "dev-3", "dev-4")
    assert b.aggregation.status(task.secure_round, actor="op")["phase"] != "failed"
    one_round = _settings(rounds=1).calibrated().dp().epsilon_after(1)
    for d in DEVICES:
        expected = one_round if d in bound.members else 0.0
        assert sum(line.federated for line in b.ledger.statement(d)) == pytest.approx(expected, abs=1e-6), d
    assert a.events.count("learning.secure_round") == 1
