"""Policy versions and activations: one contract for the SQL and in-memory stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from iotguard.clock import FixedClock
from iotguard.errors import ConfigError, PolicyDenied
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.policy_store import SqlPolicyRepository, load_posture, save_posture
from iotguard.policy import (
    AccessRequest,
    InMemoryPolicyRepository,
    PolicyAdministration,
    PolicyEngine,
    PolicyRepository,
    PolicySet,
    PolicyValidationError,
    RecordingAuditSink,
    default_policy_set,
)
from tests.policy.conftest import NOW, fleet


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def repository(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PolicyRepository]:
    if request.param == "memory":
        yield InMemoryPolicyRepository()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlPolicyRepository(engine)
    engine.dispose()


def test_repository_contract(repository: PolicyRepository) -> None:
    assert repository.active_version() is None
    v1 = repository.add_version("a", "d1", "alice", "first", NOW)
    v2 = repository.add_version("b", "d2", "bob", "", NOW + timedelta(seconds=1))
    assert (v1.version, v2.version) == (1, 2)
    assert repository.get_version(2).text == "b"
    assert repository.get_version(1).created_at == NOW
    assert [v.version for v in repository.versions()] == [1, 2]
    with pytest.raises(ConfigError):
        repository.get_version(3)
    with pytest.raises(ConfigError):
        repository.record_activation(7, "x", NOW)
    a1 = repository.record_activation(1, "alice", NOW)
    a2 = repository.record_activation(2, "bob", NOW)
    assert (a1.previous, a2.previous) == (None, 1)
    active = repository.active_version()
    assert active is not None and active.version == 2
    repository.record_activation(1, "carol", NOW)  # rollback
    active = repository.active_version()
    assert active is not None and active.version == 1
    assert [a.actor for a in repository.activations()] == ["alice", "bob", "carol"]


def test_invalid_policy_set_cannot_be_activated(repository: PolicyRepository) -> None:
    audit = RecordingAuditSink()
    admin = PolicyAdministration(repository, audit=audit, clock=FixedClock(NOW))
    engine = PolicyEngine(None, posture=fleet(), clock=FixedClock(NOW))
    bad = PolicySet('@id("bad") permit (principal, action == Action::"reboot", resource);')
    with pytest.raises(PolicyValidationError):
        admin.propose_and_activate(bad, author="mallory", engine=engine)
    assert repository.versions() == [] and not engine.loaded
    # A stored version that no longer validates cannot be (re-)activated either.
    smuggled = repository.add_version(bad.text, bad.digest, "mallory", "", NOW)
    with pytest.raises(PolicyValidationError):
        admin.activate(smuggled.version, actor="mallory", engine=engine)
    assert repository.active_version() is None and not engine.loaded
    assert [e for e, _ in audit.events] == ["policy.rejected", "policy.activation_refused"]


def test_activation_is_audited_and_loaded(repository: PolicyRepository) -> None:
    audit = RecordingAuditSink()
    admin = PolicyAdministration(repository, audit=audit, clock=FixedClock(NOW))
    engine = PolicyEngine(None, posture=fleet(), clock=FixedClock(NOW))
    request = AccessRequest.device("dev-a1", "publish", "iotguard/plant-a/dev-a1/telemetry")
    assert not engine.decide(request).allowed  # no policy: deny everything
    act = admin.propose_and_activate(default_policy_set(), author="sam", comment="initial", engine=engine)
    assert act.version == 1 and engine.policy_version == 1
    assert engine.decide(request).allowed
    assert [e for e, _ in audit.events] == ["policy.version_added", "policy.activated"]
    assert audit.events[1][1]["digest"] == default_policy_set().digest
    # A fresh engine (another hub process) loads the active version.
    other = PolicyEngine(None, posture=fleet(), clock=FixedClock(NOW))
    assert admin.load_active(other) == 1 and other.loaded
    admin.quarantine(engine.posture, "dev-a1", actor="sam", reason="alert 42")
    assert not engine.decide(request).allowed
    assert audit.events[-1][0] == "policy.quarantine"
    assert admin.diff(1, 1).empty


def test_load_active_without_version_fails_closed(repository: PolicyRepository) -> None:
    admin = PolicyAdministration(repository, clock=FixedClock(NOW))
    engine = PolicyEngine(default_policy_set(), posture=fleet(), clock=FixedClock(NOW))
    assert admin.load_active(engine) == 0
    assert not engine.loaded
    with pytest.raises(PolicyDenied):
        engine.authorize(AccessRequest.device("dev-a1", "publish", "iotguard/plant-a/dev-a1/telemetry"))


def test_posture_round_trip_through_registry(tmp_path: Path) -> None:
    from sqlalchemy import insert

    from iotguard.hub.schema import devices

    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    with engine.begin() as conn:
        for device_id, status in (("dev-a1", "active"), ("dev-a2", "active"), ("dev-b1", "revoked")):
            conn.execute(
                insert(devices).values(
                    device_id=device_id,
                    model="thermo-1",
                    segment="plant-a",
                    status=status,
                    cert_not_after=NOW + timedelta(days=5),
                    created_at=NOW,
                )
            )
    source = fleet()
    source.quarantine("dev-a1")
    save_posture(engine, source, now=NOW)
    store = load_posture(engine)
    assert sorted(p.device_id for p in store) == ["dev-a1", "dev-a2"]  # revoked device gets no posture
    a1 = store.get("dev-a1")
    assert a1 is not None and a1.quarantined and a1.trust_tier == "verified"
    assert a1.cert_not_after == NOW + timedelta(days=5)
    engine.dispose()
