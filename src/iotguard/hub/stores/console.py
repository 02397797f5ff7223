"""Console sessions and device-owner access tokens (ADR 1400).

An operator trades an API token for a short-lived session cookie; a data
subject trades the per-subject access token a privacy officer issued for one.
Only SHA-256 digests of the cookie and of the access token are stored, so a
database dump opens no session. Sessions live in the database, so every hub
process behind one PostgreSQL accepts them and a logout or a revoked API
token ends them everywhere at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Column, DateTime, LargeBinary, MetaData, String, Table, delete, select, update
from sqlalchemy.engine import Connection, Engine

from iotguard.errors import AuthenticationError
from iotguard.hub.stores._sql import aware_utc

__all__ = [
    "SESSION_TTL",
    "SUBJECT_TOKEN_TTL",
    "ConsoleSession",
    "ConsoleSessionStore",
    "MemoryConsoleSessionStore",
    "SqlConsoleSessionStore",
    "create_console_tables",
    "new_secret",
    "secret_digest",
]

#: A console session ends this long after login (no sliding renewal: log in again).
SESSION_TTL = timedelta(minutes=30)
#: A device owner's access token is valid this long after a privacy officer issues it.
SUBJECT_TOKEN_TTL = timedelta(days=30)
#: Upper bound on any secret the console accepts (cookie, access token).
MAX_SECRET_LENGTH = 128
#: Role of a data subject's session (a Cedar role, ``roles.json``).
SUBJECT_ROLE = "data-subject"

_meta = MetaData()
console_sessions = Table(
    "console_sessions",
    _meta,
    Column("digest", LargeBinary(32), primary_key=True),
    Column("principal", String(128), nullable=False),
    Column("role", String(32), nullable=False),
    Column("token_id", String(32), nullable=True),
    Column("subject_id", String(128), nullable=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)
subject_tokens = Table(
    "console_subject_tokens",
    _meta,
    Column("digest", LargeBinary(32), primary_key=True),
    Column("subject_id", String(128), nullable=False, index=True),
    Column("issued_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)


def create_console_tables(conn: Connection) -> None:
    """Migration 1400: console sessions and device-owner access tokens."""
    _meta.create_all(conn, tables=[console_sessions, subject_tokens])


def new_secret(prefix: str) -> str:
    """A fresh 256-bit secret with a readable prefix (``igs`` session, ``igo`` owner access)."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def secret_digest(secret: str, purpose: str) -> bytes:
    """The stored form of a console secret (domain-separated per ``purpose``).

    Raises:
        AuthenticationError: the secret is empty or longer than :data:`MAX_SECRET_LENGTH`.
    """
    if not secret or len(secret) > MAX_SECRET_LENGTH:
        raise AuthenticationError("malformed console secret")
    return hashlib.sha256(f"iotguard-console-{purpose}-v1\x00{secret}".encode()).digest()


@dataclass(frozen=True)
class ConsoleSession:
    """A logged-in console user (never holds the cookie secret).

    Attributes:
        principal: The API token's name, or ``subject:<id>`` for a data subject.
        role: The Cedar role the session's requests are decided with.
        token_id: The operator API token the session came from (None for a data subject).
        subject_id: The data subject (None for an operator).
        csrf_token: Must accompany every state-changing form of this session.
        expires_at: End of the session.
    """

    principal: str
    role: str
    token_id: str | None
    subject_id: str | None
    csrf_token: str
    created_at: datetime
    expires_at: datetime


class ConsoleSessionStore(Protocol):
    """Console sessions and owner access tokens; ``tests/hub/console/test_sessions.py`` is its contract."""

    def put_session(self, digest: bytes, session: ConsoleSession) -> None: ...

    def session(self, digest: bytes, now: datetime) -> ConsoleSession | None:
        """The unexpired session with this cookie digest, if any."""
        ...

    def delete_session(self, digest: bytes) -> None: ...

    def delete_sessions_of_token(self, token_id: str) -> int:
        """End every session opened with an API token (it was revoked); returns how many."""
        ...

    def purge_expired(self, now: datetime) -> int: ...

    def put_subject_token(self, digest: bytes, subject_id: str, issued_by: str, now: datetime,
                          expires_at: datetime) -> None: ...

    def subject_of_token(self, digest: bytes, now: datetime) -> str | None:
        """The data subject an unexpired, unrevoked access token belongs to."""
        ...

    def revoke_subject_tokens(self, subject_id: str, now: datetime) -> int: ...


class SqlConsoleSessionStore:
    """:class:`ConsoleSessionStore` on the hub's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put_session(self, digest: bytes, session: ConsoleSession) -> None:
        with self.engine.begin() as c:
            c.execute(console_sessions.insert().values(
                digest=digest, principal=session.principal, role=session.role, token_id=session.token_id,
                subject_id=session.subject_id, csrf_token=session.csrf_token, created_at=session.created_at,
                expires_at=session.expires_at))

    def session(self, digest: bytes, now: datetime) -> ConsoleSession | None:
        with self.engine.connect() as c:
            row = c.execute(select(console_sessions).where(console_sessions.c.digest == digest)).first()
        if row is None:
            return None
        m = row._mapping
        found = ConsoleSession(m["principal"], m["role"], m["token_id"], m["subject_id"], m["csrf_token"],
                               aware_utc(m["created_at"]), aware_utc(m["expires_at"]))
        return found if found.expires_at > now else None

    def delete_session(self, digest: bytes) -> None:
        with self.engine.begin() as c:
            c.execute(delete(console_sessions).where(console_sessions.c.digest == digest))

    def delete_sessions_of_token(self, token_id: str) -> int:
        with self.engine.begin() as c:
            return int(c.execute(delete(console_sessions).where(console_sessions.c.token_id == token_id)).rowcount)

    def purge_expired(self, now: datetime) -> int:
        with self.engine.begin() as c:
            return int(c.execute(delete(console_sessions).where(console_sessions.c.expires_at <= now)).rowcount)

    def put_subject_token(self, digest: bytes, subject_id: str, issued_by: str, now: datetime,
                          expires_at: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(subject_tokens.insert().values(digest=digest, subject_id=subject_id, issued_by=issued_by,
                                                     created_at=now, expires_at=expires_at))

    def subject_of_token(self, digest: bytes, now: datetime) -> str | None:
        with self.engine.connect() as c:
            row = c.execute(select(subject_tokens).where(subject_tokens.c.digest == digest)).first()
        if row is None or row.revoked_at is not None or aware_utc(row.expires_at) <= now:
            return None
        return str(row.subject_id)

    def revoke_subject_tokens(self, subject_id: str, now: datetime) -> int:
        with self.engine.begin() as c:
            n = c.execute(update(subject_tokens).where(subject_tokens.c.subject_id == subject_id,
                                                       subject_tokens.c.revoked_at.is_(None))
                          .values(revoked_at=now)).rowcount
            c.execute(delete(console_sessions).where(console_sessions.c.subject_id == subject_id))
            return int(n)


@dataclass
class _OwnerToken:
    subject_id: str
    expires_at: datetime
    revoked: bool = False


class MemoryConsoleSessionStore:
    """:class:`ConsoleSessionStore` in memory (unit tests)."""

    def __init__(self) -> None:
        self._sessions: dict[bytes, ConsoleSession] = {}
        self._tokens: dict[bytes, _OwnerToken] = {}

    def put_session(self, digest: bytes, session: ConsoleSession) -> None:
        if digest in self._sessions:
            raise AuthenticationError("session exists")
        self._sessions[digest] = session

    def session(self, digest: bytes, now: datetime) -> ConsoleSession | None:
        for known, found in self._sessions.items():
            if hmac.compare_digest(known, digest):
                return found if found.expires_at > now else None
        return None

    def delete_session(self, digest: bytes) -> None:
        self._sessions.pop(digest, None)

    def delete_sessions_of_token(self, token_id: str) -> int:
        gone = [d for d, s in self._sessions.items() if s.token_id == token_id]
        for d in gone:
            del self._sessions[d]
        return len(gone)

    def purge_expired(self, now: datetime) -> int:
        gone = [d for d, s in self._sessions.items() if s.expires_at <= now]
        for d in gone:
            del self._sessions[d]
        return len(gone)

    def put_subject_token(self, digest: bytes, subject_id: str, issued_by: str, now: datetime,
                          expires_at: datetime) -> None:
        self._tokens[digest] = _OwnerToken(subject_id, expires_at)

    def subject_of_token(self, digest: bytes, now: datetime) -> str | None:
        token = self._tokens.get(digest)
        if token is None or token.revoked or token.expires_at <= now:
            return None
        return token.subject_id

    def revoke_subject_tokens(self, subject_id: str, now: datetime) -> int:
        n = 0
        for digest, token in list(self._tokens.items()):
            if token.subject_id == subject_id and not token.revoked:
                self._tokens[digest] = replace(token, revoked=True)
                n += 1
        for d in [d for d, s in self._sessions.items() if s.subject_id == subject_id]:
            del self._sessions[d]
        return n
