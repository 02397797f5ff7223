"""Backup and restore of the hub's state: database, key-store references, audit log.

A backup is a directory: the database (SQLite through its online backup API,
so a running hub keeps writing; PostgreSQL through ``pg_dump``), the file
anchors of the audit checkpoints, and ``manifest.json`` with the SHA-256 of
every file, a checkpoint of the audit log signed just before the copy, and
the *references* to the key store: its backend and the labels of the keys
the database depends on. **Key material is never copied** (ADR 1501): every
secret in the database (session keys, per-subject data keys) is wrapped
under a key that stays in the key store (sealed software store or HSM), so a
backup holds no subject data key in clear, and deleting a subject's wrapped
key still crypto-shreds every copy sealed under it.

Restore checks the manifest's hashes, puts the database back, checks that
the key store holds every referenced key, and verifies the audit log: every
entry is re-hashed into the Merkle root, which must equal the backup's
checkpoint, whose signature must verify with the hub's log key. A subject
erased *after* the backup was taken would come back with the old database;
restore erases such subjects again (their erasure is read from the database
being replaced), so restoring never undoes an erasure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess  # nosec B404
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from iotguard.audit.merkle import leaf_hash, root_hash
from iotguard.audit.note import NoteVerifier, open_checkpoint
from iotguard.config import HubConfig
from iotguard.errors import ConfigError, IntegrityError, IotGuardError, MalformedError, ProofError, StorageError
from iotguard.fileio import atomic_write
from iotguard.hub.audit_store import DEFAULT_LOG_KEY_LABEL, open_audit_log
from iotguard.hub.db import make_engine
from iotguard.hub.services.aggregation import HE_SHARE_KEY_LABEL
from iotguard.hub.services.audit import AUDIT_ORIGIN
from iotguard.hub.services.lifecycle import open_hub_keys
from iotguard.hub.store import HubStore
from iotguard.hub.stores._sql import aware_utc
from iotguard.hub.stores.subjects import SUBJECT_KEK_LABEL, erasures
from iotguard.hub.stores.tombstones import (
    TOMBSTONE_KEY_LABEL,
    Tombstone,
    erased_subjects_in,
    read_tombstones,
    write_tombstones,
)
from iotguard.keys.keystore import KeyStore

__all__ = ["BACKUP_FORMAT", "BackupManifest", "RestoreReport", "create_backup", "restore_backup",
           "verify_audit_log"]

BACKUP_FORMAT = "iotguard-backup-v1"
_MANIFEST = "manifest.json"
_SQLITE_FILE = "hub.db"
_PG_FILE = "hub.pgdump"
_ANCHORS = "checkpoints.log"
#: Keys the database depends on (wrapped secrets, certificates, checkpoints), when present.
_KEY_LABELS = ("fleet-ca", "storage-wrap", DEFAULT_LOG_KEY_LABEL, SUBJECT_KEK_LABEL, "tuf-online",
               TOMBSTONE_KEY_LABEL, HE_SHARE_KEY_LABEL)
_ENTRY_CHUNK = 10_000


@dataclass(frozen=True)
class BackupManifest:
    """What a backup holds and how to check it."""

    format: str
    created_at: str
    database: str
    files: dict[str, str]
    keystore: dict[str, Any]
    audit: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path) -> BackupManifest:
        """Raises:
        MalformedError: ``backup_invalid``, no manifest or not one this version writes.
        """
        try:
            raw = json.loads((directory / _MANIFEST).read_text())
            manifest = cls(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise MalformedError(f"{directory} holds no readable backup manifest", code="backup_invalid") from exc
        if manifest.format != BACKUP_FORMAT or manifest.database not in ("sqlite", "postgresql"):
            raise MalformedError(f"unsupported backup format {manifest.format!r}", code="backup_invalid")
        return manifest


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did."""

    database: str
    audit_size: int
    #: Pseudonyms of the erased subjects whose restored rows were erased again (tombstones, ADR 0413).
    re_erased: list[str]
    #: Pseudonyms erased after the backup that no tombstone names (erased before migration 0410).
    unmatched_erasures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run(argv: Sequence[str]) -> None:
    # A fixed program (pg_dump / pg_restore) with a list argv and no shell (bandit B404/B603).
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)  # noqa: S603  # nosec
    if proc.returncode != 0:
        # pg_dump's messages name objects, not row values; still keep only the last line.
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise StorageError(f"{argv[0]} failed ({proc.returncode}): {tail}")


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database:
        raise ConfigError("an in-memory SQLite database cannot be backed up")
    return Path(database)


def _sqlite_copy(src: Path, dst: Path) -> None:
    """Copy with SQLite's online backup API (consistent while other connections write)."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def create_backup(cfg: HubConfig, out: Path, *, now: datetime, database_url: str | None = None) -> BackupManifest:
    """Back up the hub configured by ``cfg`` into the new directory ``out``.

    Raises:
        ConfigError: ``out`` exists and is not empty, or the database cannot be backed up.
        StorageError: the database copy failed.
    """
    url = database_url or cfg.resolved_database_url()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"backup directory {out} is not empty")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = HubStore.open(url)
    keystore = open_hub_keys(cfg)
    log = open_audit_log(store.engine, keystore, AUDIT_ORIGIN)
    checkpoint = log.publish_checkpoint(now)  # stored in the database before it is copied
    kind = store.engine.dialect.name
    store.engine.dispose()
    if kind == "sqlite":
        _sqlite_copy(_sqlite_path(url), out / _SQLITE_FILE)
        db_file = _SQLITE_FILE
    else:
        _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={out / _PG_FILE}",
              f"--dbname={_libpq_url(url)}"])
        db_file = _PG_FILE
    anchors = Path(cfg.data_dir) / "anchors" / _ANCHORS
    files = [db_file]
    if anchors.exists():
        shutil.copyfile(anchors, out / _ANCHORS)
        files.append(_ANCHORS)
    manifest = BackupManifest(
        format=BACKUP_FORMAT, created_at=now.isoformat(), database="sqlite" if kind == "sqlite" else "postgresql",
        files={name: _sha256(out / name) for name in files},
        keystore={"backend": cfg.keystore_backend, "pkcs11_module": cfg.pkcs11_module,
                  "pkcs11_token": cfg.pkcs11_token,
                  "labels": [label for label in _KEY_LABELS if keystore.has_key(label)],
                  "key_material": "not included; the key store is backed up by its own means"},
        audit={"origin": AUDIT_ORIGIN, "checkpoint": checkpoint, "verifier": log.verifier.vkey()},
    )
    atomic_write(out / _MANIFEST, json.dumps(asdict(manifest), indent=2, sort_keys=True).encode())
    return manifest


def verify_audit_log(url: str, keystore: KeyStore, checkpoint: str) -> int:
    """Re-hash every audit entry and check the root against a checkpoint signed by the hub's log key.

    Returns the checkpoint's tree size.

    Raises:
        IntegrityError: ``audit_log_mismatch``, the entries do not lead to the
            checkpoint, or the checkpoint is not signed by this hub's log key.
    """
    engine = make_engine(url)
    try:
        log = open_audit_log(engine, keystore, AUDIT_ORIGIN, create_key=False)
        try:
            cp, _note = open_checkpoint(checkpoint, log.verifier)
        except (ProofError, MalformedError) as exc:
            raise IntegrityError("the backup's audit checkpoint is not signed by this hub's log key",
                                 code="audit_log_mismatch") from exc
        if log.size() < cp.size:
            raise IntegrityError("the restored audit log is shorter than its checkpoint", code="audit_log_mismatch")
        hashes: list[bytes] = []
        for start in range(0, cp.size, _ENTRY_CHUNK):
            hashes += [leaf_hash(e) for e in log.entries(start, min(cp.size, start + _ENTRY_CHUNK))]
        if root_hash(hashes) != cp.root or log.root_hash(cp.size) != cp.root:
            raise IntegrityError("the restored audit entries do not hash to the checkpoint's root",
                                 code="audit_log_mismatch")
        return cp.size
    finally:
        engine.dispose()


def _erased_after(url: str, since: datetime) -> tuple[list[tuple[str, datetime]], bytes | None, list[Tombstone]]:
    """Pseudonyms of the subjects the database at ``url`` (if any) erased after ``since``, and its tombstones
    (ADR 0413: by which the restored rows of every subject it ever erased are recognised)."""
    if url.startswith("sqlite") and not _sqlite_path(url).exists():
        return [], None, []
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(select(erasures.c.subject_id, erasures.c.erased_at))
            names = sorted({(sid, aware_utc(at)) for sid, at in rows if aware_utc(at) > since})
        try:
            with engine.connect() as c:
                sealed, tombs = read_tombstones(c)
        except IotGuardError:
            raise
        except Exception:  # a database from before migration 0410: no tombstones
            sealed, tombs = None, []
        return names, sealed, tombs
    except IotGuardError:
        raise
    except Exception:  # no privacy tables yet: nothing was erased
        return [], None, []
    finally:
        engine.dispose()


def _erase_again(cfg: HubConfig, url: str, keystore: KeyStore, sealed: bytes | None,
                 tombs: list[Tombstone]) -> list[str]:
    """Carry the replaced database's tombstones into the restored one and erase again every subject they name
    whose rows came back; returns the pseudonyms erased again."""
    engine = make_engine(url)
    try:
        with engine.begin() as c:
            write_tombstones(c, sealed, tombs)
            doomed = erased_subjects_in(c, keystore)
    finally:
        engine.dispose()
    if not doomed:
        return []
    from iotguard.hub.compose import build_hub_services

    services = build_hub_services(cfg, database_url=url)
    try:
        for subject, pseudonym in sorted(doomed.items()):
            services.consent.privacy.erase_subject(subject, services.clock.now(), actor="restore",
                                                   pseudonym=pseudonym)
        services.drainer("restore").drain()
    finally:
        services.store.engine.dispose()
    return sorted(doomed.values())


def restore_backup(cfg: HubConfig, src: Path, *, now: datetime, database_url: str | None = None,
                   replace: bool = False) -> RestoreReport:
    """Restore the backup in ``src`` as the hub's state (stop every hub process first).

    Raises:
        MalformedError: ``backup_invalid``, not a backup.
        IntegrityError: ``backup_corrupt`` (a file's hash differs) or ``audit_log_mismatch``.
        ConfigError: ``backup_keys_missing`` (the key store lacks a referenced key), or an
            existing database without ``replace``.
        StorageError: the database could not be written.
    """
    manifest = BackupManifest.read(src)
    for name, digest in manifest.files.items():
        if Path(name).name != name or not (src / name).is_file() or _sha256(src / name) != digest:
            raise IntegrityError(f"backup file {name} is missing or altered", code="backup_corrupt")
    keystore = open_hub_keys(cfg)
    missing = [label for label in manifest.keystore.get("labels", []) if not keystore.has_key(label)]
    if missing:
        raise ConfigError(f"the key store lacks keys the backup refers to: {', '.join(missing)}",
                          code="backup_keys_missing")
    NoteVerifier.from_vkey(manifest.audit["verifier"])  # well-formed; the signature is checked below
    url = database_url or cfg.resolved_database_url()
    erased_since, sealed_tomb_key, tombs = _erased_after(url, datetime.fromisoformat(manifest.created_at))
    if manifest.database == "sqlite":
        target = _sqlite_path(url)
        if target.exists() and not replace:
            raise ConfigError(f"{target} exists; pass replace to overwrite it")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        _sqlite_copy(src / _SQLITE_FILE, target)
        os.chmod(target, 0o600)
    else:
        if not replace:
            raise ConfigError("restoring into PostgreSQL replaces its tables; pass replace")
        _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
              f"--dbname={_libpq_url(url)}", str(src / _PG_FILE)])
    if _ANCHORS in manifest.files:
        anchors = Path(cfg.data_dir) / "anchors"
        anchors.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / _ANCHORS, anchors / _ANCHORS)
    HubStore.open(url).engine.dispose()  # migrations of a backup from an older version
    size = verify_audit_log(url, keystore, manifest.audit["checkpoint"])
    re_erased = _erase_again(cfg, url, keystore, sealed_tomb_key, tombs)
    # Erasures after the backup whose subject no tombstone names (made before migration 0410): their keys are
    # destroyed in the key store, so their restored data stays unreadable, but their rows cannot be found.
    tomb_times = {t.erased_at for t in tombs}
    unmatched = sorted(name for name, at in erased_since if at not in tomb_times)
    return RestoreReport(manifest.database, size, re_erased, unmatched)
