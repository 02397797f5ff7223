"""Per-subject data keys, contributions to aggregates, and the record of each erasure.

Tables (part of migration ``0300_privacy``): ``privacy_subject_keys``
(per-subject data keys wrapped under a hub key, for copies the hub cannot
later reach; deleting the row crypto-shreds every such copy),
``privacy_contributions`` and ``privacy_erasures``.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    select,
)
from sqlalchemy.engine import Connection

from iotguard.errors import (
    IntegrityError,
    KeyStoreError,
)
from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import AuditedSqlStore
from iotguard.hub.stores._sql import utc as _utc
from iotguard.keys.keystore import KeyKind, KeyStore

__all__ = [
    "SUBJECT_KEK_LABEL",
    "SqlSubjectStore",
    "SubjectStore",
    "contributions",
    "erasures",
    "open_with_subject_key",
    "seal_with_subject_key",
    "subject_keys",
]

#: Hub key-store label of the AES key that wraps per-subject data keys.
SUBJECT_KEK_LABEL = "privacy-subject-kek"

subject_keys = Table(
    "privacy_subject_keys",
    metadata,
    Column("subject_id", String(128), primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

contributions = Table(
    "privacy_contributions",
    metadata,
    Column("subject_id", String(128), nullable=False),
    Column("aggregate_id", String(128), nullable=False),
    Column("description", Text, nullable=False),
    Column("contributed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("subject_id", "aggregate_id"),
)

erasures = Table(
    "privacy_erasures",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subject_id", String(128), nullable=False, index=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("summary", Text, nullable=False),  # JSON: counts, devices, aggregates
)



def seal_with_subject_key(key: bytes, subject_id: str, plaintext: bytes) -> bytes:
    """AES-256-GCM under a subject's key, bound to the subject id: nonce || ciphertext."""
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, subject_id.encode())


def open_with_subject_key(key: bytes, subject_id: str, sealed: bytes) -> bytes:
    """Inverse of :func:`seal_with_subject_key`.

    Raises:
        IntegrityError: truncated or altered.
    """
    if len(sealed) < 28:
        raise IntegrityError("sealed subject data is truncated")
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], subject_id.encode())
    except InvalidTag:
        raise IntegrityError("sealed subject data failed authentication") from None


class SubjectStore(Protocol):
    """Per-subject data keys, contributions to aggregates, and erasure records."""

    def record_contribution(self, subject_id: str, aggregate_id: str, description: str, at: datetime) -> None: ...

    def seal_for_subject(self, subject_id: str, plaintext: bytes, at: datetime) -> bytes:
        """Encrypt under the subject's own key (created on first use)."""
        ...

    def open_for_subject(self, subject_id: str, sealed: bytes) -> bytes:
        """Raises KeyStoreError once the key is shredded, IntegrityError when altered."""
        ...

    def erasures_of(self, subject_id: str) -> list[dict[str, Any]]: ...

    def forget_subject_data(self, conn: Any, subject_id: str) -> tuple[tuple[str, ...], bool]:
        """Erasure: delete contributions, shred the key; returns (aggregates, shredded)."""
        ...

    def record_erasure(self, conn: Any, subject_id: str, at: datetime, actor: str, summary: str) -> None: ...


class SqlSubjectStore(AuditedSqlStore):
    """Subject keys, contributions and erasure records on SQLite or PostgreSQL."""

    _keystore: KeyStore | None = None

    def record_contribution(self, subject_id: str, aggregate_id: str, description: str, at: datetime) -> None:
        """Record that the subject's data went into an aggregate (a DP query, a model, an export)."""
        with self._engine.begin() as c:
            c.execute(
                delete(contributions).where(
                    contributions.c.subject_id == subject_id, contributions.c.aggregate_id == aggregate_id
                )
            )
            c.execute(
                contributions.insert().values(
                    subject_id=subject_id,
                    aggregate_id=aggregate_id,
                    description=description,
                    contributed_at=_utc(at),
                )
            )

    def _kek(self) -> KeyStore:
        if self._keystore is None:
            raise KeyStoreError("subject keys need the hub key store")
        if not self._keystore.has_key(SUBJECT_KEK_LABEL):
            self._keystore.generate(SUBJECT_KEK_LABEL, KeyKind.AES256)
        return self._keystore

    def seal_for_subject(self, subject_id: str, plaintext: bytes, at: datetime) -> bytes:
        """Encrypt data about a subject under the subject's own key (created on first use).

        Use it for every copy the hub will not be able to reach later (an
        export handed out, a backup): erasing the subject destroys the key
        and with it every such copy.

        Raises:
            KeyStoreError: no hub key store.
        """
        ks = self._kek()
        ad = b"iotguard subject key|" + subject_id.encode()
        with self._engine.begin() as c:
            wrapped = c.execute(
                select(subject_keys.c.wrapped_key).where(subject_keys.c.subject_id == subject_id)
            ).scalar()
            if wrapped is None:
                key = AESGCM.generate_key(bit_length=256)
                c.execute(
                    subject_keys.insert().values(
                        subject_id=subject_id,
                        wrapped_key=ks.seal(SUBJECT_KEK_LABEL, key, ad),
                        created_at=_utc(at),
                    )
                )
            else:
                key = ks.unseal(SUBJECT_KEK_LABEL, bytes(wrapped), ad)
        return seal_with_subject_key(key, subject_id, plaintext)

    def open_for_subject(self, subject_id: str, sealed: bytes) -> bytes:
        """Decrypt :meth:`seal_for_subject` output.

        Raises:
            KeyStoreError: the subject's key was shredded (or never existed).
            IntegrityError: the data was altered.
        """
        ks = self._kek()
        with self._engine.connect() as c:
            wrapped = c.execute(
                select(subject_keys.c.wrapped_key).where(subject_keys.c.subject_id == subject_id)
            ).scalar()
        if wrapped is None:
            raise KeyStoreError("no key for this subject (erased?)")
        key = ks.unseal(SUBJECT_KEK_LABEL, bytes(wrapped), b"iotguard subject key|" + subject_id.encode())
        return open_with_subject_key(key, subject_id, sealed)

    def erasures_of(self, subject_id: str) -> list[dict[str, Any]]:
        """Erasure records for a subject."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(erasures.c.summary).where(erasures.c.subject_id == subject_id).order_by(erasures.c.id)
            )
            return [json.loads(r[0]) for r in rows]

    def subject_records(self, subject_id: str) -> tuple[list[Any], list[Any]]:
        """(contribution rows, erasure rows) of a subject, for an access request."""
        with self._engine.connect() as c:
            contrib = c.execute(select(contributions).where(contributions.c.subject_id == subject_id))
            erased = c.execute(select(erasures).where(erasures.c.subject_id == subject_id))
            return list(contrib.mappings().all()), list(erased.mappings().all())

    def forget_subject_data(self, conn: Connection, subject_id: str) -> tuple[tuple[str, ...], bool]:
        """Erasure: delete contributions and shred the subject's key in ``conn``'s transaction.

        Returns the aggregates the subject had contributed to, and whether a key was shredded.
        """
        aggs = tuple(sorted(r[0] for r in conn.execute(
            select(contributions.c.aggregate_id).where(contributions.c.subject_id == subject_id))))
        conn.execute(delete(contributions).where(contributions.c.subject_id == subject_id))
        shredded = (conn.execute(delete(subject_keys).where(subject_keys.c.subject_id == subject_id)).rowcount
                    or 0) > 0
        return aggs, shredded

    def record_erasure(self, conn: Connection, subject_id: str, at: datetime, actor: str, summary: str) -> None:
        """Keep the proof of an erasure (in ``conn``'s transaction)."""
        conn.execute(erasures.insert().values(subject_id=subject_id, erased_at=at, actor=actor, summary=summary))
