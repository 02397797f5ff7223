"""Named attacks on the audit log, each caught by verify, the monitor or the witness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from iotguard.audit import (
    AlertKind,
    AuditEvent,
    EventType,
    ExportBundle,
    LocalLogSource,
    MemoryLogStore,
    Monitor,
    NoteSigner,
    TransparencyLog,
    Witness,
    export_segment,
    verify_export,
)
from iotguard.audit.note import SIG_COSIGNATURE_V1
from iotguard.errors import ProofError, RollbackError
from iotguard.hub.audit_store import FileWitnessState, create_audit_tables, open_audit_log
from iotguard.hub.db import make_engine
from iotguard.keys.keystore import KeyKind
from iotguard.keys.software import SoftwareKeyStore

ORIGIN = "attack.test/audit"
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def ev(i: int, subject: str = "dev-7") -> AuditEvent:
    return AuditEvent(EventType.POLICY_CHANGED, T0 + timedelta(seconds=i), "op:alice", subject, {"rev": i})


@pytest.fixture
def keys(tmp_path: Path) -> SoftwareKeyStore:
    ks = SoftwareKeyStore(tmp_path / "keys")
    ks.generate("audit-log", KeyKind.ED25519)
    ks.generate("witness", KeyKind.ED25519)
    return ks


def memory_log(keys: SoftwareKeyStore, n: int) -> TransparencyLog:
    log = TransparencyLog(MemoryLogStore(), NoteSigner(keys, "audit-log", ORIGIN))
    log.append([ev(i) for i in range(n)])
    return log


def sqlite_log(keys: SoftwareKeyStore, tmp_path: Path, n: int) -> TransparencyLog:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    with engine.begin() as conn:
        create_audit_tables(conn)
    log = open_audit_log(engine, keys, ORIGIN, create_key=False)
    log.append([ev(i) for i in range(n)])
    return log


def witness(keys: SoftwareKeyStore, log: TransparencyLog, tmp_path: Path) -> Witness:
    signer = NoteSigner(keys, "witness", "witness.test/w1", SIG_COSIGNATURE_V1)
    return Witness(signer, [log.verifier], FileWitnessState(tmp_path / "witness" / "state.json"))


def test_modified_stored_leaf_is_detected_by_verify(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    """Check for a rewritten entry: an operator edits a row in the database."""
    log = sqlite_log(keys, tmp_path, 40)
    note = log.publish_checkpoint()
    verify_export(export_segment(log, 0, 40, note), log.verifier)  # untouched: fine
    forged = AuditEvent(EventType.POLICY_CHANGED, T0, "op:mallory", "dev-7", {"rev": 0}).to_cbor()
    engine = log.store._engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_entries SET data = :d WHERE seq = 13"), {"d": forged})
    with pytest.raises(ProofError):
        verify_export(export_segment(log, 0, 40, note), log.verifier)
    with pytest.raises(ProofError):
        verify_export(export_segment(log, 10, 20, note), log.verifier)


def test_dropped_leaf_is_detected_by_verify(keys: SoftwareKeyStore) -> None:
    """Check for a deletion: one entry is removed from an exported segment."""
    log = memory_log(keys, 33)
    bundle = export_segment(log, 5, 30, log.publish_checkpoint())
    entries = bundle.entries[:7] + bundle.entries[8:]
    dropped = ExportBundle(bundle.checkpoint, bundle.start, entries, bundle.left, bundle.consistency)
    with pytest.raises(ProofError):
        verify_export(ExportBundle.from_json(dropped.to_json()), log.verifier)


def test_reordered_leaves_are_detected_by_verify(keys: SoftwareKeyStore) -> None:
    """Check for reordering: two entries swap places."""
    log = memory_log(keys, 20)
    bundle = export_segment(log, 0, 20, log.publish_checkpoint())
    entries = list(bundle.entries)
    entries[3], entries[4] = entries[4], entries[3]
    swapped = ExportBundle(bundle.checkpoint, 0, entries, bundle.left, bundle.consistency)
    with pytest.raises(ProofError):
        verify_export(swapped, log.verifier)


def test_forked_log_for_two_clients_is_refused_by_the_witness(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    """Check for a split view: the log shows client A one history and client B another."""
    view_a, view_b = memory_log(keys, 10), memory_log(keys, 10)
    view_a.append([ev(100)])
    view_b.append([ev(200)])
    cp_a, cp_b = view_a.publish_checkpoint(), view_b.publish_checkpoint()
    w = witness(keys, view_a, tmp_path)
    w.cosign(view_a.checkpoint_at(10) or view_a.publish_checkpoint(), [], T0)
    cosigned = w.cosign(cp_a, view_a.consistency_proof(10, 11), T0)
    assert "witness.test/w1" in cosigned
    with pytest.raises(ProofError):  # same size, other root
        w.cosign(cp_b, view_b.consistency_proof(10, 11), T0)
    view_b.append([ev(201)])
    with pytest.raises(ProofError):  # larger, but not an extension of what the witness saw
        w.cosign(view_b.publish_checkpoint(), view_b.consistency_proof(11, 12), T0)


def test_forked_log_is_detected_by_the_monitor(keys: SoftwareKeyStore) -> None:
    """Check for a split view seen by one monitor over time."""
    view_a, view_b = memory_log(keys, 10), memory_log(keys, 10)
    view_a.append([ev(100)])
    view_b.append([ev(200)])
    view_a.publish_checkpoint()
    view_b.publish_checkpoint()
    monitor = Monitor(view_a.verifier)
    first = monitor.poll(LocalLogSource(view_a), None)
    assert first.ok and first.state is not None
    same_size = monitor.poll(LocalLogSource(view_b), first.state)
    assert [a.kind for a in same_size.alerts] == [AlertKind.SPLIT_VIEW]
    view_b.append([ev(201)])
    view_b.publish_checkpoint()
    larger = monitor.poll(LocalLogSource(view_b), first.state)
    assert [a.kind for a in larger.alerts] == [AlertKind.INCONSISTENT]
    assert larger.state == first.state  # never advances past an inconsistency


def test_rollback_to_older_checkpoint_is_refused(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    """Check for a rollback: an older checkpoint is presented after a newer one was seen."""
    log = memory_log(keys, 12)
    old = log.publish_checkpoint()
    log.append([ev(i) for i in range(12, 20)])
    new = log.publish_checkpoint()
    w = witness(keys, log, tmp_path)
    w.cosign(old, [], T0)
    w.cosign(new, log.consistency_proof(12, 20), T0)
    with pytest.raises(RollbackError):
        w.cosign(old, [], T0)
    # The auditor who trusts the newer checkpoint refuses an export against the older one.
    with pytest.raises(RollbackError):
        verify_export(export_segment(log, 0, 12, old), log.verifier, trusted_checkpoint=new)
    # A monitor that verified the newer tree raises a rollback alert.
    monitor = Monitor(log.verifier)
    state = monitor.poll(LocalLogSource(log), None).state

    class OldView(LocalLogSource):
        def latest_checkpoint(self) -> str:
            return old

    result = monitor.poll(OldView(log), state)
    assert [a.kind for a in result.alerts] == [AlertKind.ROLLBACK]


def test_monitor_detects_rewritten_and_missing_entries(keys: SoftwareKeyStore) -> None:
    """Check the monitor recomputes the root from the entries the log serves."""
    log = memory_log(keys, 16)
    log.publish_checkpoint()
    monitor = Monitor(log.verifier)
    state = monitor.poll(LocalLogSource(log), None).state
    log.append([ev(i) for i in range(16, 24)])
    log.publish_checkpoint()
    assert isinstance(log.store, MemoryLogStore)
    log.store.tamper_leaf(20, ev(999).to_cbor())
    rewritten = monitor.poll(LocalLogSource(log), state)
    assert [a.kind for a in rewritten.alerts] == [AlertKind.ENTRIES_MISMATCH]

    class Withholding(LocalLogSource):
        def entries(self, start: int, end: int) -> list[bytes]:
            return []

    missing = monitor.poll(Withholding(log), state)
    assert [a.kind for a in missing.alerts] == [AlertKind.MISSING_ENTRIES]


def test_checkpoint_signed_by_another_key_is_rejected(keys: SoftwareKeyStore, tmp_path: Path) -> None:
    """Check for an impostor log: right origin, wrong key."""
    log = memory_log(keys, 5)
    other_keys = SoftwareKeyStore(tmp_path / "other")
    other_keys.generate("audit-log", KeyKind.ED25519)
    impostor = TransparencyLog(MemoryLogStore(), NoteSigner(other_keys, "audit-log", ORIGIN))
    impostor.append([ev(i) for i in range(5)])
    note = impostor.publish_checkpoint()
    with pytest.raises(ProofError):
        verify_export(export_segment(impostor, 0, 5, note), log.verifier)
    result = Monitor(log.verifier).poll(LocalLogSource(impostor), None)
    assert [a.kind for a in result.alerts] == [AlertKind.BAD_CHECKPOINT]
