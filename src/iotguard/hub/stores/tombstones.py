"""Erasure tombstones: which subjects were erased, recognisable only with a hub key (ADR 0413).

An erasure names its subject by pseudonym only (ADR 0405), so a restore of a
database copy taken *before* the erasure could not tell which restored rows
(device links, consent, data-key owners, ledger, contributions) belong to an
erased subject. Each erasure therefore also writes, in its transaction, a
**tombstone**: ``HMAC-SHA256(tombstone key, subject id)`` and the time. It
does not keep the pseudonym the erasure was logged under: that would let a
holder of the key tie a guessed subject id to its past audit entries. A
restore logs its erasure under :func:`tombstone_name` instead. The tombstone key is 32 random bytes sealed
under the key store's ``erasure-tombstones`` key (never in clear in the
database or a backup): a copy of the database alone cannot test a guessed
subject id against the tombstones, while the hub, after a restore, computes
the tag of every subject id found in the restored rows and erases again
exactly the ones that match (:func:`erased_subjects_in`).

Tables (migration ``0410_erasure_tombstones``): ``privacy_erasure_tombstones``
and ``privacy_tombstone_key`` (one row: the sealed key).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256

from sqlalchemy import Column, DateTime, Integer, LargeBinary, Table, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.errors import StorageError
from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import aware_utc
from iotguard.hub.stores._sql import utc as _utc
from iotguard.keys.keystore import KeyKind, KeyStore

__all__ = ["TOMBSTONE_KEY_LABEL", "Tombstone", "add_tombstone", "create_tombstone_tables", "ensure_tombstone_key",
           "erased_subjects_in", "read_tombstones", "tombstone_name", "tombstone_tag", "write_tombstones"]

#: Key-store label of the key sealing the tombstone key.
TOMBSTONE_KEY_LABEL = "erasure-tombstones"
_AD = b"iotguard-erasure-tombstone-key"
_TAG_DOMAIN = b"iotguard-erasure-tombstone|"
_SUBJECT_OWNER = "subject:"

tombstones = Table(
    "privacy_erasure_tombstones",
    metadata,
    Column("tag", LargeBinary(32), primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
)

tombstone_key = Table(
    "privacy_tombstone_key",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("sealed_key", LargeBinary, nullable=False),
)


def create_tombstone_tables(conn: Connection) -> None:
    """Migration ``0410_erasure_tombstones``."""
    tombstones.create(conn, checkfirst=True)
    tombstone_key.create(conn, checkfirst=True)


@dataclass(frozen=True)
class Tombstone:
    tag: bytes
    erased_at: datetime


def tombstone_tag(key: bytes, subject_id: str) -> bytes:
    """The keyed hash naming an erased subject."""
    return hmac.new(key, _TAG_DOMAIN + subject_id.encode(), sha256).digest()


def tombstone_name(tag: bytes) -> str:
    """The name a restore's repeated erasure is logged under (never the subject's old pseudonym)."""
    return "tomb-" + tag[:8].hex()


def _key(conn: Connection, keystore: KeyStore) -> bytes | None:
    row = conn.execute(select(tombstone_key.c.sealed_key).where(tombstone_key.c.id == 1)).first()
    return None if row is None else keystore.unseal(TOMBSTONE_KEY_LABEL, bytes(row[0]), _AD)


def ensure_tombstone_key(engine: Engine, keystore: KeyStore) -> bytes:
    """The tombstone key, created on first use (its own transaction, before the erasure's).

    Raises:
        KeyStoreError: the key store refused or lost the sealing key.
    """
    for _ in range(2):
        with engine.begin() as conn:
            key = _key(conn, keystore)
            if key is not None:
                return key
        if not keystore.has_key(TOMBSTONE_KEY_LABEL):
            keystore.generate(TOMBSTONE_KEY_LABEL, KeyKind.AES256)
        secret = secrets.token_bytes(32)
        try:
            with engine.begin() as conn:
                conn.execute(tombstone_key.insert().values(
                    id=1, sealed_key=keystore.seal(TOMBSTONE_KEY_LABEL, secret, _AD)))
            return secret
        except SqlIntegrityError:
            continue  # another process created it first: read theirs
    raise StorageError("tombstone key could not be created")


def add_tombstone(conn: Connection, key: bytes, subject_id: str, at: datetime) -> None:
    """Record, in the erasure's transaction, that ``subject_id`` was erased; ``key`` from
    :func:`ensure_tombstone_key`."""
    tag = tombstone_tag(key, subject_id)
    if conn.execute(select(tombstones.c.tag).where(tombstones.c.tag == tag)).first() is None:
        conn.execute(tombstones.insert().values(tag=tag, erased_at=_utc(at)))


def read_tombstones(conn: Connection) -> tuple[bytes | None, list[Tombstone]]:
    """The sealed tombstone key (None before any erasure) and every tombstone (for a restore to carry over)."""
    row = conn.execute(select(tombstone_key.c.sealed_key).where(tombstone_key.c.id == 1)).first()
    rows = conn.execute(select(tombstones.c.tag, tombstones.c.erased_at)).all()
    return (bytes(row[0]) if row is not None else None, [Tombstone(bytes(t), aware_utc(a)) for t, a in rows])


def write_tombstones(conn: Connection, sealed_key: bytes | None, rows: Iterable[Tombstone]) -> int:
    """Put tombstones (and the sealed key) read from another copy of the database into this one; returns how many
    were new. The key of the other copy wins: the tags were computed under it."""
    if sealed_key is not None:
        conn.execute(tombstone_key.delete())
        conn.execute(tombstone_key.insert().values(id=1, sealed_key=sealed_key))
    have = {bytes(t) for (t,) in conn.execute(select(tombstones.c.tag))}
    new = [r for r in rows if r.tag not in have]
    if new:
        conn.execute(tombstones.insert(), [{"tag": r.tag, "erased_at": r.erased_at} for r in new])
    return len(new)


def erased_subjects_in(conn: Connection, keystore: KeyStore) -> dict[str, str]:
    """Subject ids present in this database that a tombstone names as erased, each with its
    :func:`tombstone_name`.

    Every table with a ``subject_id`` column, and the owners of data keys, are scanned.
    """
    key = _key(conn, keystore)
    if key is None:
        return {}
    tags = {bytes(t) for (t,) in conn.execute(select(tombstones.c.tag))}
    if not tags:
        return {}
    found: set[str] = set()
    for table in metadata.sorted_tables:
        if "subject_id" in table.c and conn.dialect.has_table(conn, table.name):
            found.update(s for (s,) in conn.execute(select(table.c.subject_id).distinct()) if s)
    if "privacy_data_keys" in metadata.tables and conn.dialect.has_table(conn, "privacy_data_keys"):
        owners = metadata.tables["privacy_data_keys"].c.owner
        found.update(o[len(_SUBJECT_OWNER):] for (o,) in conn.execute(select(owners))
                     if o.startswith(_SUBJECT_OWNER))
    out = {}
    for subject in sorted(found):
        tag = tombstone_tag(key, subject)
        if tag in tags:
            out[subject] = tombstone_name(tag)
    return out
