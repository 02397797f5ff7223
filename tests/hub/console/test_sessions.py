"""Contract of the console session store, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.errors import AuthenticationError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.console import (
    ConsoleSession,
    ConsoleSessionStore,
    MemoryConsoleSessionStore,
    SqlConsoleSessionStore,
    secret_digest,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConsoleSessionStore]:
    if request.param == "memory":
        yield MemoryConsoleSessionStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlConsoleSessionStore(engine)
    engine.dispose()


def _session(token_id: str | None = "t1", subject: str | None = None, ttl: timedelta = timedelta(minutes=30)
             ) -> ConsoleSession:
    return ConsoleSession("olga", "operator", token_id, subject, "csrf-1", T0, T0 + ttl)


def test_session_round_trips_until_it_expires(sessions: ConsoleSessionStore) -> None:
    d = secret_digest("igs_a", "session")
    sessions.put_session(d, _session())
    assert sessions.session(d, T0) == _session()
    assert sessions.session(d, T0 + timedelta(minutes=30)) is None  # expired at its end
    assert sessions.session(secret_digest("igs_b", "session"), T0) is None
    assert sessions.purge_expired(T0 + timedelta(hours=1)) == 1
    assert sessions.purge_expired(T0 + timedelta(hours=1)) == 0


def test_logout_and_token_revocation_end_sessions(sessions: ConsoleSessionStore) -> None:
    a, b, c = (secret_digest(f"igs_{n}", "session") for n in "abc")
    sessions.put_session(a, _session("t1"))
    sessions.put_session(b, _session("t1"))
    sessions.put_session(c, _session("t2"))
    sessions.delete_session(a)
    assert sessions.session(a, T0) is None
    assert sessions.delete_sessions_of_token("t1") == 1
    assert sessions.session(b, T0) is None and sessions.session(c, T0) is not None


def test_owner_tokens_expire_and_are_revoked_with_their_sessions(sessions: ConsoleSessionStore) -> None:
    t1, t2 = secret_digest("igo_1", "owner"), secret_digest("igo_2", "owner")
    sessions.put_subject_token(t1, "alice", "pia", T0, T0 + timedelta(days=30))
    sessions.put_subject_token(t2, "bob", "pia", T0, T0 + timedelta(days=1))
    assert sessions.subject_of_token(t1, T0) == "alice"
    assert sessions.subject_of_token(t2, T0 + timedelta(days=2)) is None
    s = secret_digest("igs_owner", "session")
    sessions.put_session(s, _session(None, "alice"))
    assert sessions.revoke_subject_tokens("alice", T0) == 1
    assert sessions.subject_of_token(t1, T0) is None and sessions.session(s, T0) is None
    assert sessions.subject_of_token(secret_digest("igo_2", "session"), T0) is None  # purposes are separated


def test_digest_refuses_empty_and_oversized_secrets() -> None:
    with pytest.raises(AuthenticationError):
        secret_digest("", "session")
    with pytest.raises(AuthenticationError):
        secret_digest("x" * 129, "session")
    assert secret_digest("igs_a", "session") != secret_digest("igs_a", "owner")
