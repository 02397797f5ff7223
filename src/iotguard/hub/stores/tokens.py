"""Operator API tokens (only a keyed hash of each secret is stored)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from iotguard.errors import AuthenticationError
from iotguard.hub.schema import api_tokens
from iotguard.hub.stores._sql import SqlStoreBase
from iotguard.hub.stores._sql import aware as _aware

__all__ = ["ROLES", "ApiToken", "MemoryOperatorTokenStore", "OperatorTokenStore", "SqlOperatorTokenStore"]

#: Operator roles, least to most privileged.
ROLES = ("viewer", "operator", "security-admin", "privacy-officer", "analyst")


@dataclass(frozen=True)
class ApiToken:
    """An authenticated operator token (never holds the secret)."""

    token_id: str
    name: str
    role: str



def _token_digest(secret: str) -> bytes:
    return hashlib.sha256(b"iotguard-api-token-v1\x00" + secret.encode()).digest()



def _new_secret(role: str) -> tuple[str, str]:
    if role not in ROLES:
        raise AuthenticationError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    token_id = secrets.token_hex(8)
    return token_id, f"igt_{token_id}_{secrets.token_urlsafe(32)}"


def _token_id_of(secret: str) -> str:
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "igt" or len(secret) > 128:
        raise AuthenticationError("malformed API token")
    return parts[1]


class OperatorTokenStore(Protocol):
    """Operator API tokens."""

    def create_api_token(self, name: str, role: str, *, now: datetime) -> str:
        """Create a token; returns the secret, shown only once. Raises AuthenticationError for an unknown role."""
        ...

    def revoke_api_token(self, token_id: str, *, now: datetime) -> None: ...

    def list_api_tokens(self) -> list[dict[str, Any]]: ...

    def authenticate_api_token(self, secret: str) -> ApiToken:
        """Raises AuthenticationError for an unknown, malformed or revoked token."""
        ...

    def active_api_token(self, token_id: str) -> ApiToken | None:
        """The token with this id unless it is unknown or revoked (console sessions re-check it per request)."""
        ...


class SqlOperatorTokenStore(SqlStoreBase):
    """Operator API tokens on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self._bind(engine)

    def create_api_token(self, name: str, role: str, *, now: datetime) -> str:
        """Create an operator API token; returns the secret, shown only once.

        Raises:
            AuthenticationError: unknown role.
        """
        token_id, secret = _new_secret(role)
        with self.engine.begin() as c:
            c.execute(api_tokens.insert().values(
                token_id=token_id, token_hash=_token_digest(secret), name=name, role=role, created_at=now))
        return secret

    def revoke_api_token(self, token_id: str, *, now: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(update(api_tokens).where(api_tokens.c.token_id == token_id).values(revoked_at=now))

    def list_api_tokens(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [{"token_id": r.token_id, "name": r.name, "role": r.role,
                     "created_at": (_aware(r.created_at) or r.created_at).isoformat(),
                     "revoked": r.revoked_at is not None}
                    for r in c.execute(select(api_tokens).order_by(api_tokens.c.created_at))]

    def authenticate_api_token(self, secret: str) -> ApiToken:
        """Check a bearer token.

        Raises:
            AuthenticationError: unknown, malformed or revoked token.
        """
        token_id = _token_id_of(secret)
        with self.engine.connect() as c:
            row = c.execute(select(api_tokens).where(api_tokens.c.token_id == token_id)).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(
            bytes(row.token_hash), _token_digest(secret)
        ):
            raise AuthenticationError("invalid API token")
        return ApiToken(row.token_id, row.name, row.role)

    def active_api_token(self, token_id: str) -> ApiToken | None:
        with self.engine.connect() as c:
            row = c.execute(select(api_tokens).where(api_tokens.c.token_id == token_id)).first()
        if row is None or row.revoked_at is not None:
            return None
        return ApiToken(row.token_id, row.name, row.role)


@dataclass
class _MemoryToken:
    token_id: str
    digest: bytes
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None = None


class MemoryOperatorTokenStore:
    """Operator API tokens in memory (unit tests)."""

    def __init__(self) -> None:
        self._tokens: dict[str, _MemoryToken] = {}

    def create_api_token(self, name: str, role: str, *, now: datetime) -> str:
        token_id, secret = _new_secret(role)
        self._tokens[token_id] = _MemoryToken(token_id, _token_digest(secret), name, role, now)
        return secret

    def revoke_api_token(self, token_id: str, *, now: datetime) -> None:
        if token_id in self._tokens:
            self._tokens[token_id].revoked_at = now

    def list_api_tokens(self) -> list[dict[str, Any]]:
        return [{"token_id": t.token_id, "name": t.name, "role": t.role, "created_at": t.created_at.isoformat(),
                 "revoked": t.revoked_at is not None}
                for t in sorted(self._tokens.values(), key=lambda t: t.created_at)]

    def authenticate_api_token(self, secret: str) -> ApiToken:
        t = self._tokens.get(_token_id_of(secret))
        if t is None or t.revoked_at is not None or not hmac.compare_digest(t.digest, _token_digest(secret)):
            raise AuthenticationError("invalid API token")
        return ApiToken(t.token_id, t.name, t.role)

    def active_api_token(self, token_id: str) -> ApiToken | None:
        t = self._tokens.get(token_id)
        if t is None or t.revoked_at is not None:
            return None
        return ApiToken(t.token_id, t.name, t.role)
