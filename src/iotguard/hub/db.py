"""Database engine and the one SQLAlchemy ``MetaData`` every hub table lives on.

SQLite (WAL, ``synchronous=FULL``) is the embedded default; any PostgreSQL
URL (``postgresql+psycopg://...``) runs the same SQLAlchemy Core code.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy import create_engine as _create_engine
from sqlalchemy.engine import Engine, make_url

__all__ = ["driver_error_summary", "is_sqlite", "make_engine", "metadata"]

metadata = MetaData()


def is_sqlite(engine: Engine) -> bool:
    """True when the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine for ``url`` with iotguard's durability settings.

    SQLite gets WAL journaling, ``synchronous=FULL`` (a committed batch
    survives power loss, not only a process crash), foreign keys, and a busy
    timeout so several processes can share one file.

    Bound parameters carry decrypted reading bodies, so the engine hides them
    (``hide_parameters=True``) from every exception it raises and from its
    own SQL log, ``echo`` included.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
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


def driver_error_summary(exc: BaseException) -> str:
    """What a log line may say about a database error: its type and code, no text.

    A driver's message can quote row values (PostgreSQL's "Failing row
    contains (...)" detail holds the whole row, reading body included), so
    only the exception type, the SQLSTATE or SQLite error name and the
    constraint name are kept.
    """
    orig = getattr(exc, "orig", None) or exc
    parts = [type(exc).__name__]
    if orig is not exc:
        parts.append(type(orig).__name__)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    if code:
        parts.append(str(code))
    diag = getattr(orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None) if diag is not None else None
    if constraint:
        parts.append(f"constraint {constraint}")
    return " ".join(parts)
