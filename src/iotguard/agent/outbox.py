"""The agent's durable outbox: sealed envelopes wait here until the hub
acknowledges them end to end.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed envelope
survives a crash of the agent process (power loss may lose the last few,
which the device never reported as sent).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

__all__ = ["Outbox"]


class Outbox:
    """Envelopes not yet acknowledged by the hub, keyed by (epoch, seq)."""

    def __init__(self, path: str | Path, *, max_items: int = 1_000_000) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (epoch INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "envelope BLOB NOT NULL, last_sent REAL NOT NULL DEFAULT 0, PRIMARY KEY (epoch, seq))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS receipts (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "receipt BLOB NOT NULL)")
        self._lock = threading.Lock()
        self.max_items = max_items

    def add(self, epoch: int, seq: int, envelope: bytes) -> None:
        """Persist an envelope before it is published."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO outbox (epoch, seq, envelope) VALUES (?, ?, ?)",
                             (epoch, seq, envelope))

    def mark_sent(self, keys: list[tuple[int, int]], at: float) -> None:
        with self._lock:
            self._db.executemany("UPDATE outbox SET last_sent = ? WHERE epoch = ? AND seq = ?",
                                 [(at, e, s) for e, s in keys])

    def remove(self, epoch: int, seqs: list[int]) -> int:
        """Forget acknowledged envelopes; returns how many were removed."""
        with self._lock:
            cur = self._db.executemany("DELETE FROM outbox WHERE epoch = ? AND seq = ?",
                                       [(epoch, s) for s in seqs])
            return cur.rowcount

    def due(self, older_than: float, limit: int = 500) -> list[tuple[int, int, bytes]]:
        """Envelopes last sent before ``older_than`` (0 = never sent), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT epoch, seq, envelope FROM outbox WHERE last_sent < ? ORDER BY epoch, seq LIMIT ?",
                (older_than, limit)).fetchall()
        return [(int(e), int(s), bytes(b)) for e, s, b in rows]

    def add_receipt(self, receipt: bytes) -> None:
        """Keep a signed privacy receipt until the hub has it."""
        with self._lock:
            self._db.execute("INSERT INTO receipts (receipt) VALUES (?)", (receipt,))

    def receipts(self, limit: int = 100) -> list[tuple[int, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT id, receipt FROM receipts ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(int(i), bytes(b)) for i, b in rows]

    def remove_receipt(self, receipt_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM receipts WHERE id = ?", (receipt_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
