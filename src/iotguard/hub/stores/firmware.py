"""The firmware repository's files (TUF metadata and images) behind one Protocol.

The repository state *is* its served files
(:meth:`~iotguard.updates.FirmwareRepository.from_files` rebuilds it), so the
store keeps ``path -> bytes``. With consistent snapshots every file except
``metadata/timestamp.json`` is immutable once stored: a store refuses to
change one (a second writer with a diverging repository is a bug, not an
update). Memory and SQL implementations pass ``tests/updates/test_firmware_store.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

from sqlalchemy import Column, LargeBinary, MetaData, String, Table, select
from sqlalchemy.engine import Connection, Engine

from iotguard.errors import IntegrityError, MalformedError
from iotguard.hub.stores._sql import SqlStoreBase

__all__ = [
    "MUTABLE_FILES",
    "FirmwareFileStore",
    "MemoryFirmwareFileStore",
    "SqlFirmwareFileStore",
    "create_firmware_tables",
    "firmware_files",
]

#: The only repository file that is replaced rather than added.
MUTABLE_FILES = frozenset({"metadata/timestamp.json"})
#: Upper bound of one stored file (metadata or image).
MAX_FILE_BYTES = 64 * 1024 * 1024
_PATH = re.compile(r"(metadata|targets)/[A-Za-z0-9][A-Za-z0-9._/-]{0,250}")

_meta = MetaData()
firmware_files = Table(
    "firmware_files",
    _meta,
    Column("path", String(256), primary_key=True),
    Column("body", LargeBinary, nullable=False),
)


def create_firmware_tables(conn: Connection) -> None:
    """Migration ``1200_firmware``: the repository's files."""
    _meta.create_all(conn)


def _check(files: Mapping[str, bytes]) -> None:
    for path, body in files.items():
        if not _PATH.fullmatch(path) or ".." in path:
            raise MalformedError(f"bad repository path {path!r}")
        if len(body) > MAX_FILE_BYTES:
            raise MalformedError(f"{path} is larger than {MAX_FILE_BYTES} bytes")


class FirmwareFileStore(Protocol):
    """Repository files by path."""

    def save(self, files: Mapping[str, bytes]) -> None:
        """Store ``files`` in one transaction (new files added, timestamp replaced).

        Raises:
            MalformedError: a path or size is out of bounds.
            IntegrityError: an immutable file would change.
        """
        ...

    def get(self, path: str) -> bytes | None:
        """One file's bytes, or ``None``."""
        ...

    def load(self) -> dict[str, bytes]:
        """Every file."""
        ...


class MemoryFirmwareFileStore:
    """:class:`FirmwareFileStore` in memory (unit tests, single process)."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}

    def save(self, files: Mapping[str, bytes]) -> None:
        _check(files)
        for path, body in files.items():
            old = self._files.get(path)
            if old is not None and old != body and path not in MUTABLE_FILES:
                raise IntegrityError(f"repository file {path} is immutable")
        self._files.update(files)

    def get(self, path: str) -> bytes | None:
        return self._files.get(path)

    def load(self) -> dict[str, bytes]:
        return dict(self._files)


class SqlFirmwareFileStore(SqlStoreBase):
    """:class:`FirmwareFileStore` in the hub database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._bind(engine)

    def save(self, files: Mapping[str, bytes]) -> None:
        _check(files)
        with self.engine.begin() as conn:
            existing = {
                row.path: row.body
                for row in conn.execute(
                    select(firmware_files.c.path, firmware_files.c.body).where(firmware_files.c.path.in_(list(files)))
                )
            }
            for path, body in files.items():
                old = existing.get(path)
                if old is None:
                    conn.execute(firmware_files.insert().values(path=path, body=body))
                elif bytes(old) != body:
                    if path not in MUTABLE_FILES:
                        raise IntegrityError(f"repository file {path} is immutable")
                    conn.execute(firmware_files.update().where(firmware_files.c.path == path).values(body=body))

    def get(self, path: str) -> bytes | None:
        with self.engine.connect() as conn:
            body = conn.execute(select(firmware_files.c.body).where(firmware_files.c.path == path)).scalar()
        return None if body is None else bytes(body)

    def load(self) -> dict[str, bytes]:
        with self.engine.connect() as conn:
            return {row.path: bytes(row.body) for row in conn.execute(select(firmware_files))}
