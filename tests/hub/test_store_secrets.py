"""Reading bodies never reach logs or exception text through database errors (issue 10).

SQLAlchemy puts bound parameters (here: decrypted reading bodies) into its
exception messages and its SQL echo log unless the engine hides them, and
PostgreSQL's "Failing row contains (...)" detail quotes the whole row.
"""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy import insert

from iotguard.errors import StorageError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.schema import readings
from iotguard.hub.store import HubStore

MARKER = b"SECRET-READING-BODY-7f3a9c"


def _url(request: pytest.FixtureRequest, db: str, tmp_path: Path) -> str:
    if db == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'hub.db'}"


def _leaks(text: str) -> bool:
    return any(form in text for form in (MARKER.decode(), MARKER.hex(), repr(MARKER)))


def _row(seq: int, **changes: object) -> dict[str, object]:
    row: dict[str, object] = {"device_id": "dev-1", "epoch": 1, "seq": seq, "topic": "t",
                              "received_at": datetime.now(UTC), "body": MARKER + bytes([seq])}
    row.update(changes)
    return row


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_integrity_error_on_readings_insert_hides_the_body(
        request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture, db: str) -> None:
    engine = make_engine(_url(request, db, tmp_path), echo=True)  # echo: the SQL log must hide them too
    migrate(engine)
    caplog.set_level(logging.DEBUG)
    with engine.begin() as c:
        c.execute(insert(readings), [_row(1)])
    with pytest.raises(sqlalchemy.exc.IntegrityError) as info, engine.begin() as c:
        c.execute(insert(readings), [_row(1)])  # the unique (device, epoch, seq) constraint
    text = "".join(traceback.format_exception(info.value)) + repr(info.value)
    assert "parameters hidden" in text.lower() or "hide_parameters" in text
    assert not _leaks(text)
    assert not _leaks(caplog.text)


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_failed_batch_storage_error_and_logs_hold_no_body(
        request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture, db: str) -> None:
    store = HubStore.open(_url(request, db, tmp_path))
    caplog.set_level(logging.DEBUG)
    # A NOT NULL violation in the batch: PostgreSQL's detail would quote the failing row, body and all.
    with pytest.raises(StorageError) as info:
        store.store_batch([_row(1), _row(2, device_id=None)], [], {}, now=datetime.now(UTC))
    text = "".join(traceback.format_exception(info.value))
    assert "IntegrityError" in text
    assert not _leaks(text)
    assert not _leaks(caplog.text)
    logging.getLogger("iotguard.test").exception("as a worker would log it", exc_info=info.value)
    assert not _leaks(caplog.text)
    assert store.reading_count() == 0
