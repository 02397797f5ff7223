"""One contract for the credential records (bootstrap, token usage, end of support) on memory, SQLite and PostgreSQL.

The credential logic of :mod:`iotguard.hub.credentials` is run on each, so the
in-memory twin cannot drift from the SQL store the hub uses.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.errors import AuthenticationError
from iotguard.hub.credentials import (
    CredentialStores,
    credential_audit,
    ensure_bootstrap,
    record_use,
    redeem_bootstrap,
    set_end_of_support,
    support_warnings,
)
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.credentials import MemoryCredentialStore, SqlCredentialStore
from iotguard.hub.stores.devices import SqlDeviceStore
from iotguard.hub.stores.devices_memory import MemoryDeviceStore
from iotguard.hub.stores.tokens import MemoryOperatorTokenStore, SqlOperatorTokenStore

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CredentialStores]:
    if request.param == "memory":
        yield CredentialStores(MemoryDeviceStore(), MemoryOperatorTokenStore(), MemoryCredentialStore())
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield CredentialStores(SqlDeviceStore(engine), SqlOperatorTokenStore(engine), SqlCredentialStore(engine))
    engine.dispose()


def test_bootstrap_secret_is_issued_once_and_redeemed_once(stores: CredentialStores) -> None:
    secret = ensure_bootstrap(stores, T0)
    assert secret is not None and secret.startswith("igb_")
    assert ensure_bootstrap(stores, T0 + timedelta(minutes=1)) is None  # one pending secret at a time
    token = redeem_bootstrap(stores, secret, "first-admin", T0 + timedelta(minutes=2))
    assert stores.tokens.authenticate_api_token(token).role == "security-admin"
    with pytest.raises(AuthenticationError):
        redeem_bootstrap(stores, secret, "again", T0 + timedelta(minutes=3))
    assert ensure_bootstrap(stores, T0 + timedelta(days=30)) is None  # the hub has an operator now


def test_expired_bootstrap_secret_is_refused_reported_and_replaced(stores: CredentialStores) -> None:
    old = ensure_bootstrap(stores, T0, ttl=timedelta(hours=1))
    assert old is not None
    late = T0 + timedelta(hours=2)
    with pytest.raises(AuthenticationError):
        redeem_bootstrap(stores, old, "late", late)
    assert [f.reason for f in credential_audit(stores, late)] == ["bootstrap_token_expired"]
    new = ensure_bootstrap(stores, late)
    assert new is not None and new != old
    with pytest.raises(AuthenticationError):
        redeem_bootstrap(stores, old, "old-secret", late)
    redeem_bootstrap(stores, new, "admin", late)


def test_a_bootstrap_secret_is_burnt_when_operators_exist(stores: CredentialStores) -> None:
    secret = ensure_bootstrap(stores, T0)
    assert secret is not None
    stores.tokens.create_api_token("made-by-cli", "operator", now=T0)
    with pytest.raises(AuthenticationError, match="burnt"):
        redeem_bootstrap(stores, secret, "admin", T0)
    with pytest.raises(AuthenticationError):
        redeem_bootstrap(stores, secret, "admin", T0)


def test_concurrent_issuers_store_one_secret(stores: CredentialStores) -> None:
    issued: list[bool] = []
    barrier = threading.Barrier(4)

    def issue(i: int) -> None:
        barrier.wait()
        issued.append(stores.records.issue_bootstrap(bytes([i]) * 32, T0, T0 + timedelta(hours=1)))

    threads = [threading.Thread(target=issue, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(issued) == [False, False, False, True]


def test_usage_is_written_at_most_once_per_interval(stores: CredentialStores) -> None:
    record_use(stores, "t1", T0)
    record_use(stores, "t1", T0 + timedelta(seconds=30))  # inside the interval: not written
    assert stores.records.last_uses() == {"t1": T0}
    record_use(stores, "t1", T0 + timedelta(minutes=2))
    record_use(stores, "t2", T0 + timedelta(minutes=3))
    assert stores.records.last_uses() == {"t1": T0 + timedelta(minutes=2), "t2": T0 + timedelta(minutes=3)}


def test_token_audit_reads_usage_from_the_store(stores: CredentialStores) -> None:
    used = stores.tokens.authenticate_api_token(stores.tokens.create_api_token("used", "viewer", now=T0))
    idle = stores.tokens.authenticate_api_token(stores.tokens.create_api_token("idle", "viewer", now=T0))
    record_use(stores, used.token_id, T0 + timedelta(days=40))
    findings = {(f.credential, f.reason) for f in credential_audit(stores, T0 + timedelta(days=45))}
    assert (idle.token_id, "never_used") in findings
    assert not any(c == used.token_id and r in ("never_used", "unused") for c, r in findings)


def test_expired_enrollment_tokens_are_found(stores: CredentialStores) -> None:
    stores.devices.create_device("d1", "m1", "s1", serial=None, now=T0, token_hash=b"\x07" * 32,
                                 token_expires_at=T0 + timedelta(hours=1))
    assert stores.devices.expired_enrollment_tokens(T0) == []
    assert stores.devices.expired_enrollment_tokens(T0 + timedelta(hours=2)) == [(b"\x07" * 32, "d1")]
    findings = credential_audit(stores, T0 + timedelta(hours=2))
    assert [(f.kind, f.credential) for f in findings] == [("enrollment_token", ("07" * 6))]


def test_end_of_support_moves_and_warns_for_live_devices(stores: CredentialStores) -> None:
    stores.devices.create_device("d1", "m1", "s1", serial=None, now=T0, token_hash=b"\x01" * 32,
                                 token_expires_at=T0 + timedelta(days=1))
    stores.devices.create_device("d2", "m2", "s1", serial=None, now=T0, token_hash=b"\x02" * 32,
                                 token_expires_at=T0 + timedelta(days=1))
    set_end_of_support(stores, "m1", T0 + timedelta(days=400))
    set_end_of_support(stores, "m1", T0 + timedelta(days=10))  # moved
    set_end_of_support(stores, "m2", T0 + timedelta(days=400))
    assert stores.records.end_of_support() == {"m1": T0 + timedelta(days=10), "m2": T0 + timedelta(days=400)}
    warnings = support_warnings(stores, T0, timedelta(days=30))
    assert [(w.model, w.ended, w.devices) for w in warnings] == [("m1", False, ("d1",))]
    assert [w.ended for w in support_warnings(stores, T0 + timedelta(days=11), timedelta(0))] == [True]
