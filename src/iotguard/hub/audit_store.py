"""The audit log in the hub database, and the file-backed audit state stores.

Tables (migration ``0100_audit_log``):

* ``audit_entries`` -- one row per leaf: index, leaf hash, type, subject,
  canonical CBOR bytes.
* ``audit_nodes`` -- hashes of complete subtrees at every
  :data:`~iotguard.audit.tree.STRIDE`-th level, keyed by
  ``level << 48 | index``; with the leaf hashes they give any proof in
  O(log n) reads.
* ``audit_log_state`` -- one row: tree size and compact range. It is also the
  sequencer lock: every append first updates this row, which serialises
  appenders across processes (a row lock on PostgreSQL, the write lock on
  SQLite) so the log has exactly one order.
* ``audit_checkpoints`` -- published signed checkpoints, one per size.
* ``audit_final_checkpoints`` -- checkpoints with the k-of-n witness
  cosignatures that made them final (migration ``0110_final_checkpoints``).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from iotguard.audit.anchor import AnchorReceipt
from iotguard.audit.log import LeafRecord, TransparencyLog
from iotguard.audit.monitor import MonitorState
from iotguard.audit.note import SIG_ED25519, Checkpoint, NoteSigner, parse_note
from iotguard.audit.tree import CompactRange, NodeKey, integrate
from iotguard.audit.witness import TreeHead
from iotguard.errors import MalformedError, ProofError, StorageError
from iotguard.fileio import atomic_write
from iotguard.hub.db import metadata
from iotguard.keys.keystore import KeyKind, KeyStore

__all__ = [
    "DEFAULT_LOG_KEY_LABEL",
    "FileAnchor",
    "FileMonitorState",
    "FileWitnessState",
    "SqlLogStore",
    "audit_checkpoints",
    "audit_entries",
    "audit_final_checkpoints",
    "audit_log_state",
    "audit_nodes",
    "create_audit_tables",
    "create_final_checkpoint_table",
    "open_audit_log",
]

#: Key-store label of the log's checkpoint signing key.
DEFAULT_LOG_KEY_LABEL = "audit-log"

_NODE_SHIFT = 48
_STATE_ID = 1
_Id = BigInteger().with_variant(Integer, "sqlite")

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("seq", _Id, primary_key=True, autoincrement=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("data", LargeBinary, nullable=False),
)
Index("ix_audit_entries_subject", audit_entries.c.subject, audit_entries.c.seq)

audit_nodes = Table(
    "audit_nodes",
    metadata,
    Column("node_id", _Id, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

audit_log_state = Table(
    "audit_log_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("tree_size", BigInteger, nullable=False),
    Column("compact", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

audit_final_checkpoints = Table(
    "audit_final_checkpoints",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

_TABLES = [audit_entries, audit_nodes, audit_log_state, audit_checkpoints]


def create_final_checkpoint_table(conn: Connection) -> None:
    """Migration ``0110_final_checkpoints``."""
    audit_final_checkpoints.create(conn, checkfirst=True)


def create_audit_tables(conn: Connection) -> None:
    """Migration ``0100_audit_log``."""
    for table in _TABLES:
        table.create(conn, checkfirst=True)
    for index in audit_entries.indexes:
        index.create(conn, checkfirst=True)
    exists = conn.execute(select(audit_log_state.c.id).where(audit_log_state.c.id == _STATE_ID)).first()
    if exists is None:
        conn.execute(
            insert(audit_log_state).values(
                id=_STATE_ID, tree_size=0, compact=b"", updated_at=datetime.now(tz=UTC)
            )
        )




def _node_id(key: NodeKey) -> int:
    return key[0] << _NODE_SHIFT | key[1]


_select_leaf_hashes = select(audit_entries.c.seq, audit_entries.c.leaf_hash).where(
    audit_entries.c.seq.in_(bindparam("ids", expanding=True))
)
_select_nodes = select(audit_nodes.c.node_id, audit_nodes.c.hash).where(
    audit_nodes.c.node_id.in_(bindparam("ids", expanding=True))
)


class _BulkInsert:
    """An INSERT compiled once for the engine's dialect and run as a driver executemany.

    Appends are the hot path (tens of thousands of rows per second); going
    through the DBAPI ``executemany`` directly skips per-row bind processing
    that plain ``bytes``/``str``/``int`` values do not need.
    """

    def __init__(self, engine: Engine, table: Table, columns: Sequence[str]) -> None:
        stmt = insert(table).values({c: bindparam(c) for c in columns})
        compiled = stmt.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self._columns = list(columns)
        self._order = list(compiled.positiontup or []) if compiled.positional else None

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if self._order is None:
            params: list[Any] = [dict(zip(self._columns, row, strict=True)) for row in rows]
        elif self._order == self._columns:
            params = list(rows)
        else:
            index = [self._columns.index(name) for name in self._order]
            params = [tuple(row[i] for i in index) for row in rows]
        conn.exec_driver_sql(self.sql, params)


class _Fenced(Exception):
    """Internal: the append's fence refused (already delivered elsewhere); the transaction rolls back."""


class SqlLogStore:
    """:class:`~iotguard.audit.log.LogStore` on the hub database (SQLite or PostgreSQL).

    Args:
        engine: A migrated engine (see :func:`iotguard.hub.migrations.migrate`).
        clock_now: Source of ``updated_at`` / ``created_at`` stamps.
    """

    def __init__(self, engine: Engine, clock_now: Any = None) -> None:
        self._engine = engine
        self._now = clock_now or (lambda: datetime.now(tz=UTC))
        self._insert_entries = _BulkInsert(
            engine, audit_entries, ["seq", "leaf_hash", "event_type", "subject", "data"]
        )
        self._insert_nodes = _BulkInsert(engine, audit_nodes, ["node_id", "hash"])

    def append(self, leaves: Sequence[LeafRecord], *, fence: Callable[[Connection], bool] | None = None) -> int:
        """Sequence leaves in one durable transaction; return the first index.

        Args:
            leaves: The entries.
            fence: Called inside the transaction, under the sequencer lock,
                before anything is written; when it returns False nothing is
                appended and -1 is returned. The outbox confirms delivery
                through it, so a redelivered event is not appended twice.

        Raises:
            StorageError: the database failed; nothing was appended.
        """
        if not leaves:
            return self.head().size
        try:
            with self._engine.begin() as conn:
                # Take the sequencer lock before reading the state: a write
                # first makes SQLite wait for (and PostgreSQL queue on) the
                # single state row, so no two appenders read the same size.
                conn.execute(
                    update(audit_log_state)
                    .where(audit_log_state.c.id == _STATE_ID)
                    .values(tree_size=audit_log_state.c.tree_size)
                )
                if fence is not None and not fence(conn):
                    raise _Fenced  # rolls back whatever the fence wrote
                compact = self._read_head(conn)
                new, nodes = integrate(compact, [leaf.leaf_hash for leaf in leaves])
                first = compact.size
                self._insert_entries.run(
                    conn,
                    [
                        (first + i, leaf.leaf_hash, leaf.event_type, leaf.subject, leaf.data)
                        for i, leaf in enumerate(leaves)
                    ],
                )
                if nodes:
                    self._insert_nodes.run(conn, [(_node_id(k), h) for k, h in nodes])
                conn.execute(
                    update(audit_log_state)
                    .where(audit_log_state.c.id == _STATE_ID)
                    .values(tree_size=new.size, compact=new.encode(), updated_at=self._now())
                )
            return first
        except _Fenced:
            return -1
        except sa_exc.SQLAlchemyError as exc:
            raise StorageError(f"audit append failed: {type(exc).__name__}") from exc

    @staticmethod
    def _read_head(conn: Connection) -> CompactRange:
        row = conn.execute(
            select(audit_log_state.c.tree_size, audit_log_state.c.compact).where(
                audit_log_state.c.id == _STATE_ID
            )
        ).one_or_none()
        if row is None:
            raise StorageError("audit log is not initialised (run migrations)")
        return CompactRange.decode(int(row[0]), bytes(row[1]))

    def head(self) -> CompactRange:
        with self._engine.connect() as conn:
            return self._read_head(conn)

    def read_hashes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        leaves = [k[1] for k in keys if k[0] == 0]
        nodes = {_node_id(k): k for k in keys if k[0] != 0}
        out: dict[NodeKey, bytes] = {}
        with self._engine.connect() as conn:
            if leaves:
                for seq, h in conn.execute(_select_leaf_hashes, {"ids": leaves}):
                    out[(0, int(seq))] = bytes(h)
            if nodes:
                for node_id, h in conn.execute(_select_nodes, {"ids": list(nodes)}):
                    out[nodes[int(node_id)]] = bytes(h)
        return out

    def read_entries(self, start: int, end: int) -> list[bytes]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(audit_entries.c.data)
                .where(audit_entries.c.seq >= start, audit_entries.c.seq < end)
                .order_by(audit_entries.c.seq)
            )
            return [bytes(r[0]) for r in rows]

    def find_subject(self, subject: str, limit: int) -> list[int]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(audit_entries.c.seq)
                .where(audit_entries.c.subject == subject)
                .order_by(audit_entries.c.seq)
                .limit(limit)
            )
            return [int(r[0]) for r in rows]

    def save_checkpoint(self, size: int, note: str) -> None:
        self._save_note(audit_checkpoints, size, note)

    def checkpoint(self, size: int | None = None) -> str | None:
        return self._note(audit_checkpoints, size)

    def save_final(self, size: int, note: str) -> None:
        self._save_note(audit_final_checkpoints, size, note)

    def _save_note(self, table: Table, size: int, note: str) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(table).values(tree_size=size, note=note, created_at=self._now()))
        except sa_exc.IntegrityError:
            return  # another hub process saved this size first; keep theirs

    def final(self, size: int | None = None) -> str | None:
        return self._note(audit_final_checkpoints, size)

    def _note(self, table: Table, size: int | None) -> str | None:
        query = select(table.c.note)
        if size is None:
            query = query.order_by(table.c.tree_size.desc()).limit(1)
        else:
            query = query.where(table.c.tree_size == size)
        with self._engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else str(row[0])


def open_audit_log(
    engine: Engine,
    keystore: KeyStore | None,
    origin: str,
    *,
    key_label: str = DEFAULT_LOG_KEY_LABEL,
    create_key: bool = True,
) -> TransparencyLog:
    """Open the database-backed audit log.

    Args:
        engine: A migrated hub engine.
        keystore: Holds the checkpoint key; None opens a read-only view.
        origin: The log's origin line and key name (e.g. ``"iotguard.example/audit"``).
        key_label: Label of the Ed25519 checkpoint key in ``keystore``.
        create_key: Generate the key if it does not exist yet.

    Raises:
        KeyStoreError: the key is missing and ``create_key`` is False.
    """
    signer = None
    if keystore is not None:
        if create_key and not keystore.has_key(key_label):
            keystore.generate(key_label, KeyKind.ED25519)
        signer = NoteSigner(keystore, key_label, origin, SIG_ED25519)
    return TransparencyLog(SqlLogStore(engine), signer)


# -- file-backed state at the edge -------------------------------------------




class FileWitnessState:
    """A witness's per-log heads in one JSON file, replaced atomically.

    Args:
        path: The state file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)

    def _read(self) -> dict[str, Any]:
        if not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text())
        except ValueError:
            raise MalformedError("witness state is corrupt") from None
        if not isinstance(data, dict):
            raise MalformedError("witness state is corrupt")
        return data

    def load(self, origin: str) -> TreeHead | None:
        entry = self._read().get(origin)
        if entry is None:
            return None
        try:
            return TreeHead(int(entry["size"]), base64.b64decode(entry["root"], validate=True))
        except (KeyError, TypeError, ValueError):
            raise MalformedError("witness state is corrupt") from None

    def save(self, origin: str, head: TreeHead) -> None:
        data = self._read()
        data[origin] = {"size": head.size, "root": base64.b64encode(head.root).decode()}
        atomic_write(self._path, json.dumps(data, indent=1, sort_keys=True).encode())


class FileMonitorState:
    """A monitor's last verified checkpoint in a JSON file, replaced atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)

    def load(self) -> MonitorState | None:
        """The persisted state, if any.

        Raises:
            MalformedError: the file is corrupt.
        """
        if not self._path.exists():
            return None
        try:
            raw = json.loads(self._path.read_text())
        except ValueError:
            raise MalformedError("monitor state is corrupt") from None
        return MonitorState.from_dict(raw)

    def save(self, state: MonitorState) -> None:
        """Persist a verified state."""
        atomic_write(self._path, json.dumps(state.to_dict(), indent=1).encode())


class FileAnchor:
    """Anchors checkpoints as JSON lines in an append-only file (fsynced).

    Put the file on storage the hub operator cannot rewrite alone (a WORM
    volume, another administrative domain) for the anchor to mean anything.

    Args:
        path: The anchor file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)

    @property
    def name(self) -> str:
        return f"file:{self._path}"

    def anchor(self, checkpoint: str, now: datetime) -> AnchorReceipt:
        cp = Checkpoint.from_body(parse_note(checkpoint).text)
        line = json.dumps({"time": now.isoformat(), "checkpoint": checkpoint}, sort_keys=True) + "\n"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            offset = os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, line.encode())
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"anchor file not writable: {exc.strerror}") from None
        finally:
            os.close(fd)
        return AnchorReceipt(self.name, cp.origin, cp.size, cp.root, str(offset))

    def verify(self, receipt: AnchorReceipt, checkpoint: str) -> None:
        try:
            with self._path.open("rb") as f:
                f.seek(int(receipt.reference))
                raw = json.loads(f.readline())
        except (OSError, ValueError):
            raise ProofError("anchor file does not hold this receipt") from None
        if not isinstance(raw, dict) or raw.get("checkpoint") != checkpoint:
            raise ProofError("anchor file holds another checkpoint at this receipt")
