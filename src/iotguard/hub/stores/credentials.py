"""Credential records: the one-time bootstrap secret, API token usage, model end of support.

The logic that uses them (issue, redeem, audit, warnings) is in
:mod:`iotguard.hub.credentials`; this module only keeps the records, on SQL
(SQLite or PostgreSQL, tables from migration ``0400_credentials``) or in
memory, behind one :class:`CredentialStore` Protocol with one contract suite
(``tests/hub/test_credential_store.py``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Column, DateTime, Integer, LargeBinary, String, Table, and_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import SqlStoreBase, aware_utc

__all__ = [
    "CredentialStore",
    "MemoryCredentialStore",
    "SqlCredentialStore",
    "bootstrap_tokens",
    "create_credential_tables",
    "credential_usage",
    "model_support",
]

_SLOT = 1

bootstrap_tokens = Table(
    "bootstrap_tokens",
    metadata,
    # One row ever (slot 1): the primary key makes two hub processes starting
    # at once issue one secret, not two.
    Column("slot", Integer, primary_key=True, autoincrement=False),
    Column("token_hash", LargeBinary(32), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("redeemed_at", DateTime(timezone=True), nullable=True),
    Column("redeemed_token_id", String(32), nullable=True),
)

credential_usage = Table(
    "credential_usage",
    metadata,
    Column("token_id", String(32), primary_key=True),
    Column("first_used_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=False),
)

model_support = Table(
    "model_support",
    metadata,
    Column("model", String(64), primary_key=True),
    Column("end_of_support", DateTime(timezone=True), nullable=False),
)


def create_credential_tables(conn: Connection) -> None:
    """Migration ``0400_credentials``."""
    for table in (bootstrap_tokens, credential_usage, model_support):
        table.create(conn, checkfirst=True)


class CredentialStore(Protocol):
    """Records of the hub's operator credentials (never a secret, only hashes)."""

    def issue_bootstrap(self, token_hash: bytes, issued_at: datetime, expires_at: datetime) -> bool:
        """Store the hash of a new bootstrap secret.

        Stored only when there is none yet, or the one there expired unredeemed
        (it is replaced). Of several hub processes issuing at once, one wins.

        Returns:
            Whether this secret was stored (the caller prints it only then).
        """
        ...

    def consume_bootstrap(self, token_hash: bytes, now: datetime) -> bool:
        """Mark the bootstrap secret with this hash redeemed, once, if unexpired.

        Returns:
            Whether this call redeemed it.
        """
        ...

    def bind_bootstrap(self, token_id: str) -> None:
        """Record the API token the redeemed bootstrap secret was exchanged for."""
        ...

    def bootstrap_expired_unredeemed(self, now: datetime) -> bool:
        """Whether a bootstrap secret expired without being redeemed."""
        ...

    def record_use(self, token_id: str, now: datetime, min_interval: timedelta) -> None:
        """Record a use of an API token, writing at most once per ``min_interval``."""
        ...

    def last_uses(self) -> dict[str, datetime]:
        """Last recorded use of each API token that was ever used."""
        ...

    def set_end_of_support(self, model: str, end_of_support: datetime) -> None:
        """Set or move a model's end-of-support date."""
        ...

    def end_of_support(self, *, until: datetime | None = None) -> dict[str, datetime]:
        """End-of-support dates by model (only those on or before ``until`` if given)."""
        ...


class SqlCredentialStore(SqlStoreBase):
    """:class:`CredentialStore` on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self._bind(engine)

    def issue_bootstrap(self, token_hash: bytes, issued_at: datetime, expires_at: datetime) -> bool:
        values = {"token_hash": token_hash, "issued_at": issued_at, "expires_at": expires_at,
                  "redeemed_at": None, "redeemed_token_id": None}
        try:
            with self.engine.begin() as c:
                row = c.execute(select(bootstrap_tokens).where(bootstrap_tokens.c.slot == _SLOT)).first()
                if row is None:
                    c.execute(bootstrap_tokens.insert().values(slot=_SLOT, **values))
                    return True
                if row.redeemed_at is not None or aware_utc(row.expires_at) > issued_at:
                    return False
                n = c.execute(update(bootstrap_tokens).where(and_(
                    bootstrap_tokens.c.slot == _SLOT, bootstrap_tokens.c.redeemed_at.is_(None),
                    bootstrap_tokens.c.token_hash == row.token_hash)).values(**values)).rowcount
                return bool(n == 1)
        except SqlIntegrityError:
            return False  # another hub process issued it first

    def consume_bootstrap(self, token_hash: bytes, now: datetime) -> bool:
        with self.engine.begin() as c:
            n = c.execute(update(bootstrap_tokens).where(and_(
                bootstrap_tokens.c.slot == _SLOT,
                bootstrap_tokens.c.token_hash == token_hash,
                bootstrap_tokens.c.redeemed_at.is_(None),
                bootstrap_tokens.c.expires_at > now,
            )).values(redeemed_at=now)).rowcount
        return bool(n == 1)

    def bind_bootstrap(self, token_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(bootstrap_tokens).where(bootstrap_tokens.c.slot == _SLOT)
                      .values(redeemed_token_id=token_id))

    def bootstrap_expired_unredeemed(self, now: datetime) -> bool:
        with self.engine.connect() as c:
            return c.execute(select(bootstrap_tokens.c.slot).where(and_(
                bootstrap_tokens.c.redeemed_at.is_(None), bootstrap_tokens.c.expires_at <= now))).first() is not None

    def record_use(self, token_id: str, now: datetime, min_interval: timedelta) -> None:
        ins = self._upsert(credential_usage).values(token_id=token_id, first_used_at=now, last_used_at=now)
        stmt = ins.on_conflict_do_update(
            index_elements=["token_id"], set_={"last_used_at": ins.excluded.last_used_at},
            where=credential_usage.c.last_used_at <= now - min_interval,
        )
        with self.engine.begin() as c:
            c.execute(stmt)

    def last_uses(self) -> dict[str, datetime]:
        with self.engine.connect() as c:
            return {r.token_id: aware_utc(r.last_used_at)
                    for r in c.execute(select(credential_usage.c.token_id, credential_usage.c.last_used_at))}

    def set_end_of_support(self, model: str, end_of_support: datetime) -> None:
        ins = self._upsert(model_support).values(model=model, end_of_support=end_of_support)
        with self.engine.begin() as c:
            c.execute(ins.on_conflict_do_update(index_elements=["model"],
                                                set_={"end_of_support": ins.excluded.end_of_support}))

    def end_of_support(self, *, until: datetime | None = None) -> dict[str, datetime]:
        q = select(model_support)
        if until is not None:
            q = q.where(model_support.c.end_of_support <= until)
        with self.engine.connect() as c:
            return {r.model: aware_utc(r.end_of_support) for r in c.execute(q)}


@dataclass
class _Bootstrap:
    token_hash: bytes
    expires_at: datetime
    redeemed_at: datetime | None = None
    redeemed_token_id: str | None = None


class MemoryCredentialStore:
    """:class:`CredentialStore` in memory (one process; for tests and embedded use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bootstrap: _Bootstrap | None = None
        self._uses: dict[str, datetime] = {}
        self._eos: dict[str, datetime] = {}

    def issue_bootstrap(self, token_hash: bytes, issued_at: datetime, expires_at: datetime) -> bool:
        with self._lock:
            b = self._bootstrap
            if b is not None and (b.redeemed_at is not None or b.expires_at > issued_at):
                return False
            self._bootstrap = _Bootstrap(token_hash, expires_at)
            return True

    def consume_bootstrap(self, token_hash: bytes, now: datetime) -> bool:
        with self._lock:
            b = self._bootstrap
            if b is None or b.token_hash != token_hash or b.redeemed_at is not None or b.expires_at <= now:
                return False
            b.redeemed_at = now
            return True

    def bind_bootstrap(self, token_id: str) -> None:
        with self._lock:
            if self._bootstrap is not None:
                self._bootstrap.redeemed_token_id = token_id

    def bootstrap_expired_unredeemed(self, now: datetime) -> bool:
        with self._lock:
            b = self._bootstrap
            return b is not None and b.redeemed_at is None and b.expires_at <= now

    def record_use(self, token_id: str, now: datetime, min_interval: timedelta) -> None:
        with self._lock:
            last = self._uses.get(token_id)
            if last is None or last <= now - min_interval:
                self._uses[token_id] = now

    def last_uses(self) -> dict[str, datetime]:
        with self._lock:
            return dict(self._uses)

    def set_end_of_support(self, model: str, end_of_support: datetime) -> None:
        with self._lock:
            self._eos[model] = end_of_support

    def end_of_support(self, *, until: datetime | None = None) -> dict[str, datetime]:
        with self._lock:
            return {m: t for m, t in self._eos.items() if until is None or t <= until}
