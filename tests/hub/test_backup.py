"""``iotguard backup`` / ``restore``: the hub's state comes back, the audit log is verified,
no key material is copied, and a restore never undoes an erasure (crypto-shredding holds)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.config import HubConfig
from iotguard.errors import IntegrityError, KeyStoreError
from iotguard.hub.backup import create_backup, restore_backup
from iotguard.hub.compose import build_hub_services
from iotguard.privacy.at_rest import subject_owner
from tests.hub.conftest import HubParts, make_hub
from tests.hub.test_ingest import _seal


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _fill(parts: HubParts) -> bytes:
    """Readings from two devices, and a subject with a data key; returns that key in clear."""
    for name in ("bk-1", "bk-2"):
        a = parts.agent(name)
        assert parts.processor.process([_seal(a, i) for i in range(5)]).stored == 5
    privacy = parts.services.consent.privacy
    privacy.seal_for_subject("alice", b"export for alice", _now())
    privacy.seal_for_subject("bob", b"export for bob", _now())
    parts.deliver()
    key = privacy.subject_keyring().existing_key(subject_owner("alice"))
    assert key is not None
    return bytes(key.secret)


def _fresh_hub_with_same_keys(parts: HubParts, tmp: Path) -> HubConfig:
    """A new data directory whose key store is the old one (backed up by its own means)."""
    cfg = HubConfig(data_dir=str(tmp / "restored"))
    Path(cfg.data_dir).mkdir(mode=0o700)
    shutil.copytree(Path(parts.cfg.data_dir) / "keys", Path(cfg.data_dir) / "keys")
    return cfg


def test_backup_and_restore_bring_back_readings_and_a_verified_audit_log(tmp_path: Path) -> None:
    parts = make_hub(tmp_path)
    clear_key = _fill(parts)
    manifest = create_backup(parts.cfg, tmp_path / "backup", now=_now())
    files = sorted(p.name for p in (tmp_path / "backup").iterdir())
    assert files == sorted([*manifest.files, "manifest.json"]) and "keys" not in files
    assert {"fleet-ca", "audit-log"} <= set(manifest.keystore["labels"])
    # Crypto-shredding: the subject's data key is nowhere in the backup in clear.
    for f in (tmp_path / "backup").iterdir():
        assert clear_key not in f.read_bytes()

    cfg = _fresh_hub_with_same_keys(parts, tmp_path)
    report = restore_backup(cfg, tmp_path / "backup", now=_now())
    assert report.audit_size >= 1 and report.re_erased == []
    restored = build_hub_services(cfg)
    assert restored.store.reading_count("bk-1") == 5 and restored.store.reading_count("bk-2") == 5
    assert restored.consent.privacy.open_for_subject(
        "bob", restored.consent.privacy.seal_for_subject("bob", b"x", _now())) == b"x"


def test_restore_refuses_an_audit_log_altered_in_the_backup(tmp_path: Path) -> None:
    """Check for tampering with a backup: an audit entry rewritten, and the manifest's hash
    recomputed to match, still fails, because the entries no longer hash to the signed checkpoint."""
    import hashlib

    parts = make_hub(tmp_path)
    _fill(parts)
    create_backup(parts.cfg, tmp_path / "backup", now=_now())
    db = tmp_path / "backup" / "hub.db"
    con = sqlite3.connect(db)
    con.execute("UPDATE audit_entries SET data = CAST(X'00' || data AS BLOB) "
                "WHERE seq = (SELECT MIN(seq) FROM audit_entries)")
    con.commit()
    con.close()
    manifest_path = tmp_path / "backup" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["hub.db"] = hashlib.sha256(db.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError) as exc:
        restore_backup(_fresh_hub_with_same_keys(parts, tmp_path), tmp_path / "backup", now=_now())
    assert exc.value.code == "audit_log_mismatch"


def test_restore_refuses_a_backup_file_altered_after_it_was_written(tmp_path: Path) -> None:
    parts = make_hub(tmp_path)
    _fill(parts)
    create_backup(parts.cfg, tmp_path / "backup", now=_now())
    with (tmp_path / "backup" / "hub.db").open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(IntegrityError) as exc:
        restore_backup(_fresh_hub_with_same_keys(parts, tmp_path), tmp_path / "backup", now=_now())
    assert exc.value.code == "backup_corrupt"


def test_restoring_an_older_backup_does_not_bring_back_an_erased_subject(tmp_path: Path) -> None:
    """Check for resurrection of erased data: a subject erased after the backup is erased again
    on restore, so exports sealed under their key stay unreadable."""
    parts = make_hub(tmp_path)
    _fill(parts)
    sealed = parts.services.consent.privacy.seal_for_subject("alice", b"alice's export", _now())
    create_backup(parts.cfg, tmp_path / "backup", now=_now())
    parts.services.consent.erase("alice", actor="test")
    parts.store.engine.dispose()
    report = restore_backup(parts.cfg, tmp_path / "backup", now=_now(), replace=True)
    # Erasure records name subjects by pseudonym only (ADR 0405); the erasure's tombstone (ADR 0413) finds
    # alice's restored rows; her key was destroyed in the key store at erasure, which no restore undoes.
    assert len(report.re_erased) == 1 and report.re_erased[0].startswith("tomb-")
    assert report.unmatched_erasures == []
    restored = build_hub_services(parts.cfg)
    with pytest.raises(KeyStoreError):
        restored.consent.privacy.open_for_subject("alice", sealed)
    assert restored.store.reading_count("bk-1") == 5


@pytest.mark.slow
def test_backup_and_restore_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    url = postgres_url
    parts = make_hub(tmp_path, url)
    _fill(parts)
    manifest = create_backup(parts.cfg, tmp_path / "backup", now=_now(), database_url=url)
    assert manifest.database == "postgresql"
    with parts.store.engine.begin() as c:  # lose data after the backup
        c.exec_driver_sql("DELETE FROM readings")
    parts.store.engine.dispose()
    report = restore_backup(parts.cfg, tmp_path / "backup", now=_now(), database_url=url, replace=True)
    assert report.audit_size >= 1
    restored = build_hub_services(parts.cfg, database_url=url)
    assert restored.store.reading_count("bk-1") == 5
    # erase a subject after a backup, restore it: the tombstone carried over finds and erases their rows again
    subject = "carol-pg-e2e"
    restored.consent.privacy.link_device(subject, "bk-2", _now())
    restored.consent.privacy.set_consent(subject, "research", True, _now(), actor="test")
    create_backup(parts.cfg, tmp_path / "backup-pg2", now=_now(), database_url=url)
    restored.consent.erase(subject, actor="test")
    restored.store.engine.dispose()
    report = restore_backup(parts.cfg, tmp_path / "backup-pg2", now=_now(), database_url=url, replace=True)
    assert len(report.re_erased) == 1 and report.unmatched_erasures == []
    again = build_hub_services(parts.cfg, database_url=url)
    with again.store.engine.connect() as c:
        for table, column in (("privacy_subject_devices", "subject_id"), ("privacy_consent_events", "subject_id"),
                              ("privacy_data_keys", "owner")):
            n = c.exec_driver_sql(f"SELECT count(*) FROM {table} WHERE {column} LIKE %s",
                                  ("%" + subject + "%",)).scalar()
            assert n == 0, table
    assert again.store.reading_count("bk-2") == 0 and again.store.reading_count("bk-1") == 5
    again.store.engine.dispose()


def _dump(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


def test_after_restoring_a_pre_erasure_backup_nothing_links_to_the_erased_subject(tmp_path: Path) -> None:
    """Erase, restore a backup from before the erasure: the subject's device links, consent, data-key owner,
    contributions and readings found again by their tombstone are erased again; no row of the restored database
    names the subject, no query or export finds anything, and the audit log still verifies."""
    from iotguard.hub.backup import verify_audit_log
    from iotguard.hub.services.lifecycle import open_hub_keys

    subject = "alice-7f3e-e2e"
    parts = make_hub(tmp_path)
    _fill(parts)
    privacy = parts.services.consent.privacy
    privacy.link_device(subject, "bk-1", _now())
    privacy.set_consent(subject, "research", True, _now(), actor="test")
    privacy.record_contribution(subject, "agg-1", "fleet mean", _now())
    sealed = privacy.seal_for_subject(subject, b"alice's export", _now())
    parts.deliver()
    db = Path(parts.cfg.data_dir) / "hub.db"
    assert subject in _dump(db)
    create_backup(parts.cfg, tmp_path / "backup", now=_now())
    assert subject in (tmp_path / "backup" / "hub.db").read_bytes().decode("latin-1")  # the older copy names them
    record = parts.services.consent.erase(subject, actor="test")
    assert subject not in _dump(db)
    parts.store.engine.dispose()

    report = restore_backup(parts.cfg, tmp_path / "backup", now=_now(), replace=True)
    assert len(report.re_erased) == 1 and report.re_erased[0].startswith("tomb-")
    assert report.re_erased[0] != record.pseudonym  # the tombstone does not keep the subject's old pseudonym
    assert subject not in _dump(db)  # no link, consent, key owner, contribution, ledger or audit row
    restored = build_hub_services(parts.cfg)
    p = restored.consent.privacy
    assert p.devices_of(subject) == [] and restored.store.reading_count("bk-1") == 0
    assert restored.store.reading_count("bk-2") == 5  # everyone else's data came back
    assert not p.export_subject(subject, _now())["devices"]
    with pytest.raises(KeyStoreError):
        p.open_for_subject(subject, sealed)
    # the audit log, with the restore's erasure appended, still verifies against a fresh checkpoint
    again = create_backup(parts.cfg, tmp_path / "backup2", now=_now())
    restored.store.engine.dispose()
    assert verify_audit_log(f"sqlite:///{db}", open_hub_keys(parts.cfg), again.audit["checkpoint"]) >= 1
    # a second restore of the same old backup finds the same subject again by the carried-over tombstone
    report2 = restore_backup(parts.cfg, tmp_path / "backup", now=_now(), replace=True)
    assert report2.re_erased == report.re_erased and subject not in _dump(db)
