"""Sealed copies per subject, contributions to aggregates and models, and the record of each erasure.

Tables (part of migration ``0300_privacy``): ``privacy_subject_keys``
(round one's per-subject keys under one fixed hub key: no longer written,
deleted at erasure), ``privacy_contributions`` (which aggregates and models
each subject's data went into; the analytics and learning services append
through :meth:`SqlSubjectStore.record_contribution`, ``kind`` from migration
``0312_contribution_kind``) and ``privacy_erasures`` (proof of each erasure,
under the subject's audit pseudonym). Copies sealed for a subject use the
subject's data key from :class:`~iotguard.hub.stores.data_keys.SubjectKeyring`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
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
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection

from iotguard.errors import (
    IntegrityError,
    KeyStoreError,
    MalformedError,
)
from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import AuditedSqlStore
from iotguard.hub.stores._sql import utc as _utc
from iotguard.hub.stores.data_keys import SubjectKeyring
from iotguard.keys.keystore import KeyStore
from iotguard.privacy.at_rest import KEY_ID_BYTES, device_owner, subject_owner

__all__ = [
    "CONTRIBUTION_KINDS",
    "SUBJECT_KEK_LABEL",
    "SqlSubjectStore",
    "SubjectStore",
    "contributions",
    "erasures",
    "open_with_subject_key",
    "seal_with_subject_key",
    "subject_keys",
]

#: What a subject's data can have gone into.
CONTRIBUTION_KINDS = ("aggregate", "model", "export")

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
    Column("kind", String(16), nullable=False, server_default="aggregate"),  # CONTRIBUTION_KINDS
    PrimaryKeyConstraint("subject_id", "aggregate_id"),
)

erasures = Table(
    "privacy_erasures",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    # The subject's audit pseudonym (ADR 0405); rows from before it hold the subject id.
    Column("subject_id", String(128), nullable=False, index=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("summary", Text, nullable=False),  # JSON: counts, devices, aggregates
)


def add_contribution_kind(conn: Connection) -> None:
    """Migration ``0312_contribution_kind``: a contribution is to an aggregate, a model or an export."""
    if "kind" not in {c["name"] for c in inspect(conn).get_columns("privacy_contributions")}:
        conn.execute(text("ALTER TABLE privacy_contributions ADD COLUMN kind VARCHAR(16) NOT NULL "
                          "DEFAULT 'aggregate'"))


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

    def record_contribution(self, subject_id: str, aggregate_id: str, description: str, at: datetime, *,
                            kind: str = "aggregate") -> None:
        """Record that the subject's data went into an aggregate, a model or an export."""
        ...

    def seal_for_subject(self, subject_id: str, plaintext: bytes, at: datetime) -> bytes:
        """Encrypt under the subject's own key (created on first use)."""
        ...

    def open_for_subject(self, subject_id: str, sealed: bytes) -> bytes:
        """Raises KeyStoreError once the key is shredded, IntegrityError when altered."""
        ...

    def erasures_of(self, subject_id: str) -> list[dict[str, Any]]: ...

    def forget_subject_data(self, conn: Any, subject_id: str, *, device_ids: Sequence[str] = (),
                            at: datetime | None = None) -> tuple[tuple[str, ...], bool]:
        """Erasure: delete contributions, shred the subject's (and its devices') keys; returns
        (``kind:id`` of each contribution, whether a key was shredded)."""
        ...

    def record_erasure(self, conn: Any, subject_id: str, at: datetime, actor: str, summary: str) -> None: ...


class SqlSubjectStore(AuditedSqlStore):
    """Subject keys, contributions and erasure records on SQLite or PostgreSQL."""

    _keystore: KeyStore | None = None
    _keyring: SubjectKeyring | None = None

    def record_contribution(self, subject_id: str, aggregate_id: str, description: str, at: datetime, *,
                            kind: str = "aggregate") -> None:
        """Record that the subject's data went into an aggregate (a DP query), a model or an export.

        Erasure lists these (``kind:aggregate_id``) so their owners can act on them.

        Raises:
            MalformedError: unknown ``kind``.
        """
        if kind not in CONTRIBUTION_KINDS:
            raise MalformedError(f"unknown contribution kind {kind!r}")
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
                    kind=kind,
                )
            )

    def subject_keyring(self, at: datetime | None = None) -> SubjectKeyring:
        """The per-subject data keys (built on the hub key store on first use).

        Raises:
            KeyStoreError: no hub key store.
        """
        if self._keyring is None:
            if self._keystore is None:
                raise KeyStoreError("subject keys need the hub key store")
            self._keyring = SubjectKeyring(self._engine, self._keystore)
        return self._keyring

    def seal_for_subject(self, subject_id: str, plaintext: bytes, at: datetime, *, kind: str = "export") -> bytes:
        """Encrypt data about a subject under the subject's data key (created on first use): key id || sealed.

        Use it for every copy the hub will not be able to reach later (an
        export handed out, a backup): erasing the subject destroys the key
        and with it every such copy.

        Raises:
            KeyStoreError: no hub key store.
        """
        key = self.subject_keyring(at).key_for(subject_owner(subject_id), at)
        return key.key_id + key.seal_document(kind, plaintext)

    def open_for_subject(self, subject_id: str, sealed: bytes, *, kind: str = "export") -> bytes:
        """Decrypt :meth:`seal_for_subject` output.

        Raises:
            KeyStoreError: the subject's key was shredded (or never existed).
            IntegrityError: the data was altered, or sealed for another subject.
        """
        if len(sealed) <= KEY_ID_BYTES:
            raise IntegrityError("sealed subject data is truncated")
        key = self.subject_keyring().key_by_id(sealed[:KEY_ID_BYTES], fresh=True)
        if key.owner != subject_owner(subject_id):
            raise IntegrityError("sealed for another subject")
        return key.open_document(kind, sealed[KEY_ID_BYTES:])

    def audit_name(self, subject_id: str, at: datetime) -> str:
        """How the audit log names a subject: its keyed pseudonym (ADR 0405).

        Raises:
            KeyStoreError: no hub key store (the audit log never names a subject in clear).
        """
        return self.subject_keyring(at).pseudonym(subject_id, at)

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

    def forget_subject_data(self, conn: Connection, subject_id: str, *, device_ids: Sequence[str] = (),
                            at: datetime | None = None) -> tuple[tuple[str, ...], bool]:
        """Erasure: delete contributions and shred the subject's data keys in ``conn``'s transaction.

        The subject's own key and the keys of its devices' readings from before
        they were linked are destroyed (their wrapping keys in the key store
        first, see :meth:`SubjectKeyring.shred`). Call it first in an erasure:
        on PostgreSQL it waits for ingest transactions sealing under these keys.

        Returns:
            ``kind:aggregate_id`` of each contribution, and whether a key was shredded.
        """
        rows = conn.execute(select(contributions.c.kind, contributions.c.aggregate_id)
                            .where(contributions.c.subject_id == subject_id)).all()
        aggs = tuple(sorted(f"{k}:{a}" for k, a in rows))
        conn.execute(delete(contributions).where(contributions.c.subject_id == subject_id))
        legacy = (conn.execute(delete(subject_keys).where(subject_keys.c.subject_id == subject_id)).rowcount
                  or 0) > 0
        shredded = 0
        if self._keystore is not None or self._keyring is not None:
            owners = [subject_owner(subject_id), *(device_owner(d) for d in device_ids)]
            shredded = self.subject_keyring(at).shred(conn, owners)
        return aggs, legacy or shredded > 0

    def record_erasure(self, conn: Connection, subject_id: str, at: datetime, actor: str, summary: str) -> None:
        """Keep the proof of an erasure (in ``conn``'s transaction)."""
        conn.execute(erasures.insert().values(subject_id=subject_id, erased_at=at, actor=actor, summary=summary))
