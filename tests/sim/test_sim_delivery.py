"""The demo's delivery summary is a set comparison that can see loss, duplication and forgeries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from iotguard.hub.store import HubStore
from iotguard.sim import reading_identity, reconcile, stored_identities
from iotguard.wire import Reading, encode_reading


def _body(i: int) -> bytes:
    return encode_reading(Reading(1_700_000_000_000 + i, {"temperature": 20.0 + i}, "heating_control"))


def test_reconcile_counts_by_identity_not_by_count() -> None:
    sent = [reading_identity("d1", _body(i)) for i in range(4)]
    # Same number of rows as sent, but one lost, one stored twice, one nobody sent: a count
    # difference would say "lost 0".
    stored = [sent[0], sent[1], sent[1], reading_identity("d1", _body(99))]
    report = reconcile(sent, stored)
    assert (report.sent, report.stored) == (4, 4)
    assert (report.lost, report.duplicated, report.unexpected) == (2, 1, 1)
    assert reconcile(sent, sent).to_dict() == {"sent": 4, "stored": 4, "lost": 0, "duplicated": 0, "unexpected": 0}


def test_identity_separates_devices() -> None:
    assert reading_identity("d1", _body(1)) != reading_identity("d2", _body(1))


def test_summary_query_sees_a_reading_stored_under_two_sequence_numbers(tmp_path: Path) -> None:
    """The unique (device, epoch, seq) constraint cannot catch a re-sealed copy; the content identity does."""
    store = HubStore.open(f"sqlite:///{tmp_path / 'hub.db'}")
    now = datetime.now(UTC)
    rows = [{"device_id": "d1", "epoch": 1, "seq": seq, "topic": "t", "received_at": now, "body": _body(i)}
            for seq, i in ((1, 1), (2, 2), (3, 2))]  # reading 2 re-sealed under seq 3
    store.store_batch(rows, [], {}, now=now)
    sent = {reading_identity("d1", _body(i)) for i in (1, 2, 3)}
    report = reconcile(sent, stored_identities(store))
    assert (report.stored, report.lost, report.duplicated, report.unexpected) == (3, 1, 1, 0)
