"""Operator API tokens (only a keyed hash of each secret is stored)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from iotguard.errors import AuthenticationError
from iotguard.hub.schema import api_tokens
from iotguard.hub.stores._sql import SqlStoreBase
from iotguard.hub.stores._sql import aware as _aware

__all__ = ["ROLES", "ApiToken", "SqlOperatorTokenStore"]

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



class SqlOperatorTokenStore(SqlStoreBase):
    """Operator API tokens on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self._bind(engine)

    def create_api_token(self, name: str, role: str, *, now: datetime) -> str:
        """Create an operator API token; returns the secret, shown only once.

        Raises:
            AuthenticationError: unknown role.
        """
        if role not in ROLES:
            raise AuthenticationError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        token_id = secrets.token_hex(8)
        secret = f"igt_{token_id}_{secrets.token_urlsafe(32)}"
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
        parts = secret.split("_", 2)
        if len(parts) != 3 or parts[0] != "igt" or len(secret) > 128:
            raise AuthenticationError("malformed API token")
        with self.engine.connect() as c:
            row = c.execute(select(api_tokens).where(api_tokens.c.token_id == parts[1])).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(
            bytes(row.token_hash), _token_digest(secret)
        ):
            raise AuthenticationError("invalid API token")
        return ApiToken(row.token_id, row.name, row.role)
