"""Database engine and the one SQLAlchemy ``MetaData`` every hub table lives on.

SQLite (WAL, ``synchronous=FULL``) is the embedded default; any PostgreSQL
URL (``postgresql+psycopg://...``) runs the same SQLAlchemy Core code.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy import create_engine as _create_engine
from sqlalchemy.engine import Engine, make_url

__all__ = ["is_sqlite", "make_engine", "metadata"]

metadata = MetaData()


def is_sqlite(engine: Engine) -> bool:
    """True when the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine for ``url`` with iotguard's durability settings.

    SQLite gets WAL journaling, ``synchronous=FULL`` (a committed batch
    survives power loss, not only a process crash), foreign keys, and a busy
    timeout so several processes can share one file.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = _create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine
