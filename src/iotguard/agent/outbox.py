"""The agent's durable outbox: sealed envelopes wait here until the hub
acknowledges them end to end.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed envelope
survives a crash of the agent process (power loss may lose the last few,
which the device never reported as sent).

When the volume is full (or the file cannot be written at all) a new envelope
or receipt is refused with :class:`StorageError` ``outbox_unwritable``: the
caller refuses the reading at capture, and nothing already in the outbox is
touched. Bookkeeping writes (sent times, removal after an acknowledgement)
that fail are logged and skipped: the envelope stays and is sent again, and
the hub stores a resent reading once.

An envelope not acknowledged in time is due again after an interval that
doubles with each send, up to :data:`MAX_BACKOFF` times the acknowledgement
timeout (ADR 1507): a hub that is slow because it is overloaded receives a
bounded number of copies instead of one per timeout, which would only make it
slower (congestion collapse).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from iotguard.errors import StorageError

__all__ = ["MAX_BACKOFF", "Outbox"]

log = logging.getLogger(__name__)

#: The resend interval doubles with each send of an envelope, up to this many acknowledgement timeouts.
MAX_BACKOFF = 8
_MAX_DOUBLINGS = MAX_BACKOFF.bit_length() - 1
_MARK_AGAIN = "UPDATE outbox SET last_sent = ?, sends = sends + 1 WHERE epoch = ? AND seq = ?"
_MARK_FIRST = "UPDATE outbox SET last_sent = ?, sends = 1 WHERE epoch = ? AND seq = ?"
_DUE = ("SELECT epoch, seq, envelope, topic FROM outbox WHERE last_sent = 0 "
        "OR last_sent + MIN(? * (1 << MIN(MAX(sends - 1, 0), ?)), ?) < ? ORDER BY epoch, seq LIMIT ?")


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
        if "topic" not in {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}:
            # Media objects travel on their own topic (NULL: the device's telemetry topic); added to
            # outboxes created before media went through the outbox.
            self._db.execute("ALTER TABLE outbox ADD COLUMN topic TEXT")
        if "sends" not in {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}:
            # How often each envelope was published (its resend interval doubles with each); added to
            # outboxes created before resends backed off.
            self._db.execute("ALTER TABLE outbox ADD COLUMN sends INTEGER NOT NULL DEFAULT 0")
        self._db.execute("CREATE TABLE IF NOT EXISTS receipts (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "receipt BLOB NOT NULL)")
        self._lock = threading.Lock()
        self.max_items = max_items

    def add(self, epoch: int, seq: int, envelope: bytes, topic: str | None = None) -> None:
        """Persist an envelope before it is published (``topic``: where it goes, when not on the
        device's telemetry topic, e.g. a media object).

        Raises:
            StorageError: ``outbox_unwritable`` (volume full, file not writable): not stored.
        """
        with self._lock:
            try:
                self._db.execute("INSERT OR IGNORE INTO outbox (epoch, seq, envelope, topic) VALUES (?, ?, ?, ?)",
                                 (epoch, seq, envelope, topic))
            except sqlite3.Error as exc:
                raise StorageError(f"outbox not writable (volume full?): {exc}", code="outbox_unwritable") from exc

    def mark_sent(self, keys: list[tuple[int, int]], at: float, *, first: bool = False) -> None:
        """Record a publish of ``keys`` at ``at``; ``first``: count it as their first send (a new
        connection starts their backoff again)."""
        sql = _MARK_FIRST if first else _MARK_AGAIN
        with self._lock:
            try:
                self._db.executemany(sql, [(at, e, s) for e, s in keys])
            except sqlite3.Error as exc:  # the envelopes stay due and are sent again
                log.warning("outbox: send time not recorded: %s", exc)

    def remove(self, epoch: int, seqs: list[int]) -> int:
        """Forget acknowledged envelopes; returns how many were removed (0 if the file cannot be written:
        they are sent again and acknowledged again as replays)."""
        with self._lock:
            try:
                cur = self._db.executemany("DELETE FROM outbox WHERE epoch = ? AND seq = ?",
                                           [(epoch, s) for s in seqs])
            except sqlite3.Error as exc:
                log.warning("outbox: acknowledged envelopes not removed yet: %s", exc)
                return 0
            return cur.rowcount

    def sent_once(self, epoch: int, seqs: list[int]) -> list[float]:
        """When those of ``seqs`` still kept that were published exactly once were sent (the agent
        measures acknowledgement times on them, ADR 1507)."""
        if not seqs:
            return []
        wanted = set(seqs)
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT seq, last_sent FROM outbox WHERE epoch = ? AND seq BETWEEN ? AND ? AND sends = 1",
                    (epoch, min(seqs), max(seqs))).fetchall()
            except sqlite3.Error:
                return []
        return [float(t) for q, t in rows if int(q) in wanted]

    def due(self, older_than: float, limit: int = 500) -> list[tuple[int, int, bytes]]:
        """Envelopes last sent before ``older_than`` (0 = never sent), oldest first."""
        return [(e, s, b) for e, s, b, _t in self.due_entries(older_than, limit=limit)]

    def due_entries(self, now: float, timeout_s: float = 0.0, *, longest_s: float | None = None,
                    limit: int = 500) -> list[tuple[int, int, bytes, str | None]]:
        """Envelopes due at ``now``, oldest first, each with its topic (``None``: the device's telemetry
        topic): last sent more than ``timeout_s`` x 2^(sends - 1) ago, at most :data:`MAX_BACKOFF` x
        ``timeout_s`` and at most ``longest_s`` (never sent: due)."""
        longest = MAX_BACKOFF * timeout_s if longest_s is None else longest_s
        with self._lock:
            rows = self._db.execute(_DUE, (timeout_s, _MAX_DOUBLINGS, longest, now, limit)).fetchall()
        return [(int(e), int(s), bytes(b), None if t is None else str(t)) for e, s, b, t in rows]

    def add_receipt(self, receipt: bytes) -> None:
        """Keep a signed privacy receipt until the hub has it.

        Raises:
            StorageError: ``outbox_unwritable``: not stored.
        """
        with self._lock:
            try:
                self._db.execute("INSERT INTO receipts (receipt) VALUES (?)", (receipt,))
            except sqlite3.Error as exc:
                raise StorageError(f"outbox not writable (volume full?): {exc}", code="outbox_unwritable") from exc

    def receipts(self, limit: int = 100) -> list[tuple[int, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT id, receipt FROM receipts ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(int(i), bytes(b)) for i, b in rows]

    def remove_receipt(self, receipt_id: int) -> None:
        with self._lock:
            try:
                self._db.execute("DELETE FROM receipts WHERE id = ?", (receipt_id,))
            except sqlite3.Error as exc:  # sent again; the hub stores a resent receipt once
                log.warning("outbox: delivered receipt not removed yet: %s", exc)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
