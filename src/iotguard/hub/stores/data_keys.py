"""The hub's keyring of per-subject data keys, each wrapped under its own key in the key store (ADR 0405).

Table (migration ``0310_subject_data_keys``): ``privacy_data_keys``, one
wrapped data key per owner (see :mod:`iotguard.privacy.at_rest`). The key
wrapping it is an AES-256 key of its own in the hub's key store or HSM,
labelled by the data key's random id (:func:`~iotguard.privacy.at_rest.kek_label`):
the key store never learns whose key it holds.

Shredding an owner's key destroys that key-store key and deletes the row, in
the erasure's transaction, key store first: a database copy from before the
erasure (a backup, rows awaiting VACUUM) holds the wrapped data key, but the
key that unwraps it no longer exists anywhere, while every other subject's
data in that copy stays readable.

The rows sit behind the :class:`DataKeyStore` Protocol (SQL here, memory in
:mod:`iotguard.hub.stores.data_keys_memory`, one contract suite): every
method that writes takes the caller's transaction (``tx``), so sealing
readings and erasure stay atomic with the rows they touch; the memory store
holds its lock for a transaction and applies its writes on commit.

Unwrapped data keys are cached per process by key id. The cache never
decides anything another process could have changed: sealing looks up the
owner's key row inside the writing transaction (``FOR SHARE`` on
PostgreSQL, after the device's subject link, the order an erasure locks them
in), and a shredded key has no rows left to open.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    Column,
    DateTime,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.errors import KeyStoreError, StorageError
from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import aware_utc
from iotguard.hub.stores._sql import utc as _utc
from iotguard.hub.stores.consent import subject_devices
from iotguard.keys.keystore import BatchKeyGeneration, KeyKind, KeyStore
from iotguard.privacy.at_rest import (
    KEY_ID_BYTES,
    SubjectDataKey,
    device_owner,
    kek_label,
    subject_owner,
    wrap_associated_data,
)

__all__ = ["SEALED_DOCUMENT_MAGIC", "DataKeyConflict", "DataKeyRow", "DataKeyStore", "SqlDataKeyStore",
           "SubjectKeyring", "create_data_key_tables", "data_keys"]

#: Prefix of a document sealed by :meth:`SubjectKeyring.seal_device_document` (a CBOR document never
#: starts with 0x00 followed by these letters).
SEALED_DOCUMENT_MAGIC = b"\x00igsd1"

data_keys = Table(
    "privacy_data_keys",
    metadata,
    Column("key_id", LargeBinary(16), primary_key=True),
    Column("owner", String(160), nullable=False, unique=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def create_data_key_tables(conn: Connection) -> None:
    """Migration ``0310_subject_data_keys``."""
    data_keys.create(conn, checkfirst=True)


class DataKeyConflict(StorageError):
    """A data key for this owner (or with this key id) already exists: another process created it first
    (code ``storage_error``: the caller retries in a new transaction)."""


@dataclass(frozen=True)
class DataKeyRow:
    """One wrapped data key as stored."""

    key_id: bytes
    owner: str
    wrapped_key: bytes
    created_at: datetime


class DataKeyStore(Protocol):
    """The rows of wrapped data keys (one per owner). ``tx`` is the caller's transaction: a SQL
    connection for :class:`SqlDataKeyStore` (so sealing and erasure stay atomic with the rows they
    write), ignored by :class:`~iotguard.hub.stores.data_keys_memory.MemoryDataKeyStore`."""

    def rows_for(self, tx: Any, owners: Sequence[str]) -> list[DataKeyRow]:
        """The rows of these owners, locked against a concurrent shred (``FOR SHARE``) until ``tx`` ends."""
        ...

    def insert(self, tx: Any, row: DataKeyRow) -> None:
        """Add a row. Raises :class:`DataKeyConflict` when the owner or key id has one (``tx`` is then lost)."""
        ...

    def lock_owners(self, tx: Any, owners: Sequence[str]) -> list[bytes]:
        """Key ids of these owners, locked for deletion (``FOR UPDATE``) until ``tx`` ends."""
        ...

    def delete_owners(self, tx: Any, owners: Sequence[str]) -> int:
        """Delete the owners' rows; returns how many."""
        ...

    def row_by_id(self, key_id: bytes) -> DataKeyRow | None: ...

    def row_by_owner(self, owner: str) -> DataKeyRow | None: ...

    def count(self) -> int: ...

    def transaction(self) -> AbstractContextManager[Any]:
        """A transaction to pass as ``tx`` (commits on success, rolls back on error)."""
        ...


def _row(r: Any) -> DataKeyRow:
    return DataKeyRow(bytes(r.key_id), r.owner, bytes(r.wrapped_key), aware_utc(r.created_at))


class SqlDataKeyStore:
    """:class:`DataKeyStore` on SQLite or PostgreSQL (``tx``: a connection in a transaction)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"

    def transaction(self) -> AbstractContextManager[Connection]:
        return self.engine.begin()

    def rows_for(self, tx: Connection, owners: Sequence[str]) -> list[DataKeyRow]:
        q = select(data_keys).where(data_keys.c.owner.in_(sorted(set(owners))))
        if self._pg:
            q = q.with_for_update(read=True)
        return [_row(r) for r in tx.execute(q)]

    def insert(self, tx: Connection, row: DataKeyRow) -> None:
        try:
            tx.execute(data_keys.insert().values(key_id=row.key_id, owner=row.owner, wrapped_key=row.wrapped_key,
                                                 created_at=_utc(row.created_at)))
        except SqlIntegrityError:  # the transaction is lost: the caller retries in a new one
            raise DataKeyConflict("a data key for this owner or key id exists") from None

    def lock_owners(self, tx: Connection, owners: Sequence[str]) -> list[bytes]:
        q = select(data_keys.c.key_id).where(data_keys.c.owner.in_(sorted(set(owners))))
        return [bytes(r[0]) for r in tx.execute(q.with_for_update() if self._pg else q)]

    def delete_owners(self, tx: Connection, owners: Sequence[str]) -> int:
        return int(tx.execute(delete(data_keys).where(data_keys.c.owner.in_(sorted(set(owners))))).rowcount or 0)

    def row_by_id(self, key_id: bytes) -> DataKeyRow | None:
        with self.engine.connect() as c:
            r = c.execute(select(data_keys).where(data_keys.c.key_id == key_id)).first()
        return None if r is None else _row(r)

    def row_by_owner(self, owner: str) -> DataKeyRow | None:
        with self.engine.connect() as c:
            r = c.execute(select(data_keys).where(data_keys.c.owner == owner)).first()
        return None if r is None else _row(r)

    def count(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(data_keys)).scalar_one())


class SubjectKeyring:
    """Per-owner data keys for readings, documents and audit pseudonyms.

    Args:
        engine: The hub database (migrated), or a :class:`DataKeyStore` (e.g. the memory twin);
            sealing readings and device documents needs the SQL database (they read device links).
        keystore: The hub key store or HSM holding one wrapping key per data key.
        cache_size: Unwrapped data keys kept in this process.
    """

    def __init__(self, engine: Engine | DataKeyStore, keystore: KeyStore, *, cache_size: int = 4096) -> None:
        self.rows: DataKeyStore = SqlDataKeyStore(engine) if isinstance(engine, Engine) else engine
        sql_engine = engine if isinstance(engine, Engine) else getattr(engine, "engine", None)
        self._engine: Engine | None = sql_engine if isinstance(sql_engine, Engine) else None
        self._keystore = keystore
        self._pg = self._engine is not None and self._engine.dialect.name == "postgresql"
        self._cache: OrderedDict[bytes, SubjectDataKey] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The SQL database of this keyring's rows.

        Raises:
            StorageError: the rows live in memory (no SQL database).
        """
        if self._engine is None:
            raise StorageError("this keyring's data keys are not in a SQL database")
        return self._engine

    # -- data keys -------------------------------------------------------------

    def _cached(self, key_id: bytes) -> SubjectDataKey | None:
        with self._lock:
            key = self._cache.get(key_id)
            if key is not None:
                self._cache.move_to_end(key_id)
            return key

    def _remember(self, key: SubjectDataKey) -> SubjectDataKey:
        with self._lock:
            self._cache[key.key_id] = key
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return key

    def _unwrap(self, key_id: bytes, owner: str, wrapped: bytes) -> SubjectDataKey:
        cached = self._cached(key_id)
        if cached is not None and cached.owner == owner:
            return cached
        secret = self._keystore.unseal(kek_label(key_id), wrapped, wrap_associated_data(key_id, owner))
        return self._remember(SubjectDataKey(key_id, owner, secret))

    def keys_for(self, conn: Connection, owners: Iterable[str], at: datetime) -> dict[str, SubjectDataKey]:
        """Each owner's data key, created where missing, inside ``conn``'s transaction.

        Existing rows are read ``FOR SHARE`` on PostgreSQL: an erasure that
        would shred one of them waits until this transaction is over.

        Raises:
            KeyStoreError: a key-encryption key is missing from the key store.
            IntegrityError: a wrapped key was altered.
        """
        wanted = sorted(set(owners))
        if not wanted:
            return {}
        out = {r.owner: self._unwrap(r.key_id, r.owner, r.wrapped_key) for r in self.rows.rows_for(conn, wanted)}
        new = [SubjectDataKey.generate(owner) for owner in wanted if owner not in out]
        if not new:
            return out
        labels = [kek_label(key.key_id) for key in new]
        # Many new owners at once (a fleet's first readings): one key-store write for all of them where
        # the store can (the software store rewrites its whole sealed file per write).
        if isinstance(self._keystore, BatchKeyGeneration) and len(labels) > 1:
            self._keystore.generate_many(labels, KeyKind.AES256)
        else:
            for label in labels:
                self._keystore.generate(label, KeyKind.AES256)
        try:
            for key, label in zip(new, labels, strict=True):
                wrapped = self._keystore.seal(label, key.secret, wrap_associated_data(key.key_id, key.owner))
                self.rows.insert(conn, DataKeyRow(key.key_id, key.owner, wrapped, at))
        except Exception:
            for label in labels:  # nothing refers to them
                self._keystore.delete(label)
            raise
        out.update((key.owner, self._remember(key)) for key in new)
        return out

    def key_for(self, owner: str, at: datetime) -> SubjectDataKey:
        """One owner's data key, created on first use (its own transaction; retried once on an insert race).

        Raises:
            KeyStoreError, IntegrityError: see :meth:`keys_for`.
        """
        for _ in range(2):
            try:
                with self.rows.transaction() as c:
                    return self.keys_for(c, [owner], at)[owner]
            except DataKeyConflict:
                continue  # another process created it first
        raise StorageError("data key could not be created")

    def existing_key(self, owner: str) -> SubjectDataKey | None:
        """The owner's data key if it exists (never creates one)."""
        r = self.rows.row_by_owner(owner)
        return None if r is None else self._unwrap(r.key_id, r.owner, r.wrapped_key)

    def key_by_id(self, key_id: bytes, *, fresh: bool = False) -> SubjectDataKey:
        """The data key ``key_id`` (to open what was sealed under it).

        Args:
            fresh: Check the database even when this process has the key cached: for copies that
                outlive the rows sealed under the key (exports), which another process may have
                shredded meanwhile. Rows in the database go with their key, so reading them needs no check.

        Raises:
            KeyStoreError: the key was shredded (or never existed here), or
                its wrapping key is gone from the key store.
            IntegrityError: the wrapped key was altered.
        """
        cached = None if fresh else self._cached(key_id)
        if cached is not None:
            return cached
        r = self.rows.row_by_id(key_id)
        if r is None:
            with self._lock:
                self._cache.pop(key_id, None)
            raise KeyStoreError("data key shredded or unknown")
        return self._unwrap(key_id, r.owner, r.wrapped_key)

    def pseudonym(self, subject_id: str, at: datetime) -> str:
        """The audit log's name for a data subject (its data key is created on first use)."""
        return self.key_for(subject_owner(subject_id), at).pseudonym()

    # -- readings (the telemetry store's cipher) --------------------------------

    def seal_readings(self, conn: Connection, rows: Sequence[dict[str, Any]], at: datetime) -> list[dict[str, Any]]:
        """Encrypt reading rows under their owners' data keys, inside the storing transaction.

        A reading's owner is the data subject linked to its device, or the
        device itself while no subject is linked.
        """
        device_ids = sorted({r["device_id"] for r in rows})
        q = select(subject_devices.c.device_id, subject_devices.c.subject_id).where(
            subject_devices.c.device_id.in_(device_ids))
        linked = dict(conn.execute(q.with_for_update(read=True) if self._pg else q).all())
        owner_of = {d: subject_owner(linked[d]) if d in linked else device_owner(d) for d in device_ids}
        keys = self.keys_for(conn, owner_of.values(), at)
        out = []
        for r in rows:
            key = keys[owner_of[r["device_id"]]]
            out.append({**r, "key_id": key.key_id,
                        "body": key.seal_reading(r["device_id"], r["epoch"], r["seq"], bytes(r["body"]))})
        return out

    def open_reading(self, key_id: bytes, device_id: str, epoch: int, seq: int, sealed: bytes) -> bytes:
        """Decrypt a stored reading body.

        Raises:
            KeyStoreError: its data key was shredded.
            IntegrityError: altered or moved from another row.
        """
        return self.key_by_id(key_id).open_reading(device_id, epoch, seq, sealed)

    # -- documents about a device's subject (receipts) ----------------------------------

    def owner_of_device(self, conn: Connection, device_id: str) -> str:
        """The key owner of a device's data: its subject, or the device while none is linked."""
        subject = conn.execute(select(subject_devices.c.subject_id)
                               .where(subject_devices.c.device_id == device_id)).scalar()
        return subject_owner(subject) if subject else device_owner(device_id)

    def seal_device_document(self, conn: Connection, device_id: str, kind: str, body: bytes, at: datetime) -> bytes:
        """:data:`SEALED_DOCUMENT_MAGIC` || key id || body sealed under the device owner's data key."""
        key = next(iter(self.keys_for(conn, [self.owner_of_device(conn, device_id)], at).values()))
        return SEALED_DOCUMENT_MAGIC + key.key_id + key.seal_document(kind, body)

    def open_device_document(self, kind: str, stored: bytes) -> bytes:
        """Inverse of :meth:`seal_device_document`; a value without the magic is returned as is (clear, older).

        Raises:
            KeyStoreError: its data key was shredded.
            IntegrityError: altered.
        """
        if not stored.startswith(SEALED_DOCUMENT_MAGIC):
            return stored
        rest = stored[len(SEALED_DOCUMENT_MAGIC):]
        return self.key_by_id(rest[:KEY_ID_BYTES]).open_document(kind, rest[KEY_ID_BYTES:])

    # -- erasure ---------------------------------------------------------------------

    def shred(self, conn: Connection, owners: Iterable[str]) -> int:
        """Destroy the owners' data keys, in ``conn``'s transaction (the erasure's); returns how many.

        The subject links and key rows are locked first (PostgreSQL), so an
        ingest transaction sealing under one of these keys finishes before.
        Each key's wrapping key is deleted from the key store before its row:
        if the transaction then rolls back, the owner's data is unreadable
        already (the erasure is simply run again), never the other way round.

        Raises:
            KeyStoreError: the key store refused; the transaction must roll back.
        """
        doomed = sorted(set(owners))
        if not doomed:
            return 0
        if self._pg:  # the subject links first: the order an ingest transaction locks them in
            subjects = [o.removeprefix("subject:") for o in doomed if o.startswith("subject:")]
            conn.execute(select(subject_devices.c.device_id).where(subject_devices.c.subject_id.in_(subjects))
                         .with_for_update()).all()
        key_ids = self.rows.lock_owners(conn, doomed)
        for key_id in key_ids:
            self._keystore.delete(kek_label(key_id))
        self.rows.delete_owners(conn, doomed)
        with self._lock:
            for key_id in key_ids:
                self._cache.pop(key_id, None)
        return len(key_ids)

    def destroyed(self, key_id: bytes) -> bool:
        """Whether a data key is gone: no row, and no wrapping key in the key store."""
        return self.rows.row_by_id(key_id) is None and not self._keystore.has_key(kek_label(key_id))

    def key_count(self) -> int:
        """Data keys held."""
        return self.rows.count()
