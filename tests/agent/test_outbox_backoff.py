"""Resends back off per reading (ADR 1507): a hub too slow to acknowledge within the timeout gets a
bounded number of copies of each reading, not one per timeout (which would make it slower still)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from iotguard.agent.outbox import MAX_BACKOFF, Outbox


def _due_keys(box: Outbox, now: float, timeout_s: float) -> list[tuple[int, int]]:
    return [(e, s) for e, s, _b, _t in box.due_entries(now, timeout_s)]


def test_each_resend_of_a_reading_waits_twice_as_long_up_to_the_cap(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.add(1, 1, b"a")
    assert _due_keys(box, 1000.0, 3.0) == [(1, 1)]  # never sent: due at once
    box.mark_sent([(1, 1)], 1000.0)
    sent_at, waits = 1000.0, []
    for _ in range(7):
        t = sent_at
        while not _due_keys(box, t, 3.0):
            t += 0.25
        waits.append(t - sent_at)
        box.mark_sent([(1, 1)], t)
        sent_at = t
    assert waits == [3.25, 6.25, 12.25] + [3.0 * MAX_BACKOFF + 0.25] * 4
    box.close()


def test_a_new_connection_sends_everything_once_and_restarts_the_backoff(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.add(1, 1, b"a")
    for t in (1000.0, 1003.5, 1010.0, 1023.0):
        box.mark_sent([(1, 1)], t)
    assert not _due_keys(box, 1030.0, 3.0)
    box.mark_sent([(1, 1)], 1030.0, first=True)  # what a reconnect sends
    assert not _due_keys(box, 1032.9, 3.0) and _due_keys(box, 1033.1, 3.0) == [(1, 1)]
    box.close()


def test_an_overloaded_hub_gets_a_bounded_number_of_copies(tmp_path: Path) -> None:
    """90 s without an acknowledgement, the agent polling every 0.2 s with a 3 s timeout: a handful of
    copies (30 without the backoff)."""
    box = Outbox(tmp_path / "outbox.db")
    box.add(1, 1, b"a")
    box.mark_sent([(1, 1)], 1000.0)
    copies, t = 0, 1000.0
    while t < 1090.0:
        t += 0.2
        if _due_keys(box, t, 3.0):
            box.mark_sent([(1, 1)], t)
            copies += 1
    assert copies <= 7
    box.close()


def test_an_outbox_from_before_the_backoff_is_upgraded_and_keeps_its_envelopes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE outbox (epoch INTEGER NOT NULL, seq INTEGER NOT NULL, envelope BLOB NOT NULL, "
               "last_sent REAL NOT NULL DEFAULT 0, topic TEXT, PRIMARY KEY (epoch, seq))")
    db.execute("INSERT INTO outbox (epoch, seq, envelope, last_sent) VALUES (1, 1, x'01', 100.0)")
    db.commit()
    db.close()
    box = Outbox(path)
    assert _due_keys(box, 102.0, 3.0) == [] and _due_keys(box, 103.5, 3.0) == [(1, 1)]
    box.close()
