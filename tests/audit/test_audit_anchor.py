"""Anchors, the publication schedule, and the event encoding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.audit import (
    AuditEvent,
    CheckpointSchedule,
    EventType,
    LogAnchor,
    MemoryAuditSink,
    MemoryLogStore,
    NoteSigner,
    TransparencyLog,
    rejected_envelopes,
)
from iotguard.errors import MalformedError, ProofError
from iotguard.hub.audit_store import FileAnchor
from iotguard.keys.keystore import KeyKind
from iotguard.keys.software import SoftwareKeyStore

T0 = datetime(2026, 7, 1, tzinfo=UTC)


def make_log(tmp_path: Path, name: str) -> TransparencyLog:
    keys = SoftwareKeyStore(tmp_path / name)
    keys.generate("k", KeyKind.ED25519)
    return TransparencyLog(MemoryLogStore(), NoteSigner(keys, "k", f"{name}.test/log"))


def test_schedule_publishes_and_anchors_each_new_checkpoint(tmp_path: Path) -> None:
    log, summary = make_log(tmp_path, "detail"), make_log(tmp_path, "summary")
    file_anchor, log_anchor = FileAnchor(tmp_path / "anchors.jsonl"), LogAnchor(summary)
    schedule = CheckpointSchedule(log, timedelta(minutes=5), [file_anchor, log_anchor])
    log.record(rejected_envelopes("dev-1", "forged", 40, T0, T0 + timedelta(seconds=10)))
    first = schedule.tick(T0)
    assert first.checkpoint is not None and len(first.receipts) == 2 and not first.failures
    assert schedule.tick(T0 + timedelta(minutes=1)).checkpoint is None  # not due yet
    log.record_many([AuditEvent(EventType.DEVICE_QUARANTINED, T0, "op", "dev-1")])
    second = schedule.tick(T0 + timedelta(minutes=5))
    assert second.checkpoint != first.checkpoint and len(second.receipts) == 2
    for receipt in first.receipts:
        anchor = file_anchor if receipt.anchor.startswith("file:") else log_anchor
        anchor.verify(receipt, first.checkpoint)
        with pytest.raises(ProofError):
            anchor.verify(receipt, second.checkpoint or "")
    assert summary.size() == 2


def test_events_are_canonical_and_strict() -> None:
    event = AuditEvent(
        EventType.PRIVACY_BUDGET_SPENT,
        T0,
        "analyst:bob",
        "dataset:temps",
        {"epsilon": 0.5, "b": [1, {"z": 1, "a": 2}]},
    )
    data = event.to_cbor()
    assert AuditEvent.from_cbor(data) == event
    with pytest.raises(MalformedError):
        AuditEvent.from_cbor(data + b"\x00")
    with pytest.raises(MalformedError):
        AuditEvent("NotDotted", T0, "a", "s")
    with pytest.raises(MalformedError):
        AuditEvent("a.b", datetime(2026, 1, 1), "a", "s")  # naive time
    with pytest.raises(MalformedError):
        AuditEvent("a.b", T0, "a", "s", {"x": float("nan")})
    sink = MemoryAuditSink()
    sink.record(event)
    assert sink.events == [event]
