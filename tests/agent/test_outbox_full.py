"""The agent's outbox when its volume cannot be written: new readings are refused with a reason,
nothing already kept is dropped (the real-process fault is tests/reliability/test_faults_processes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotguard.agent.outbox import Outbox
from iotguard.errors import StorageError


def _unwritable(box: Outbox) -> None:
    box._db.execute("PRAGMA query_only=ON")  # every write now fails inside SQLite, as on a full volume


def test_outbox_refuses_a_new_envelope_by_reason_when_it_cannot_write(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.add(1, 1, b"kept")
    box.add_receipt(b"receipt")
    _unwritable(box)
    with pytest.raises(StorageError) as exc:
        box.add(1, 2, b"new")
    assert exc.value.code == "outbox_unwritable"
    with pytest.raises(StorageError):
        box.add_receipt(b"another")
    # Bookkeeping that cannot be written is skipped: what is kept stays and is sent again.
    box.mark_sent([(1, 1)], 5.0)
    assert box.remove(1, [1]) == 0
    box.remove_receipt(box.receipts()[0][0])
    assert box.due(10.0) == [(1, 1, b"kept")] and len(box.receipts()) == 1
    box._db.execute("PRAGMA query_only=OFF")  # space again
    box.add(1, 2, b"new")
    assert box.remove(1, [1, 2]) == 2 and len(box) == 0
    box.close()
