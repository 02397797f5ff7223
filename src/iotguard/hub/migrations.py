"""Versioned schema migrations.

Each migration has a sortable id (``"0001_core"``, ``"0100_audit_log"``...) and
a function that applies it inside one transaction. ``migrate`` applies, in id
order, every migration the database has not recorded in
``iotguard_schema_migrations``. Components own id ranges so they can add
migrations independently: 0001-0099 core, 0100-0199 audit, 0200-0299 policy,
0300-0399 privacy, 0400-0499 keys and credentials, 0500-0599 device plane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, MetaData, String, Table, select
from sqlalchemy.engine import Connection, Engine

__all__ = ["MIGRATIONS", "Migration", "applied_migrations", "migrate"]

_meta = MetaData()
_versions = Table(
    "iotguard_schema_migrations",
    _meta,
    Column("id", String(64), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Migration:
    """One schema change."""

    id: str
    description: str
    apply: Callable[[Connection], None]


MIGRATIONS: list[Migration] = []


def register(migration: Migration) -> Migration:
    """Add a migration to :data:`MIGRATIONS` (ids must be unique)."""
    if any(m.id == migration.id for m in MIGRATIONS):
        raise ValueError(f"duplicate migration id {migration.id}")
    MIGRATIONS.append(migration)
    return migration


def applied_migrations(engine: Engine) -> list[str]:
    """Ids of the migrations recorded in the database."""
    with engine.begin() as conn:
        _versions.create(conn, checkfirst=True)
        return [r[0] for r in conn.execute(select(_versions.c.id).order_by(_versions.c.id))]


def migrate(engine: Engine) -> list[str]:
    """Apply every pending migration; returns the ids applied now."""
    # Importing the modules that own tables registers their migrations.
    from iotguard.hub import schema  # noqa: F401

    done = set(applied_migrations(engine))
    applied: list[str] = []
    for m in sorted(MIGRATIONS, key=lambda m: m.id):
        if m.id in done:
            continue
        with engine.begin() as conn:
            m.apply(conn)
            conn.execute(_versions.insert().values(id=m.id, applied_at=datetime.now(tz=UTC)))
        applied.append(m.id)
    return applied
