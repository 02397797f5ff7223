"""The hub's privacy state: consent, receipts, budget ledger, subject keys, erasure, retention.

Each idea's tables live in its own store (:mod:`iotguard.hub.stores.consent`,
:mod:`~iotguard.hub.stores.receipts`, :mod:`~iotguard.hub.stores.subjects`);
:class:`PrivacyStore` is them together. What privacy does to data other
domains own goes through those domains' stores: erasure and retention ask
the telemetry store to delete readings, and read device rows through the
device store.

Every consent change, retention run and erasure is an audit event through
the one :class:`~iotguard.audit.AuditSink` passed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import cbor2
from sqlalchemy.engine import Connection, Engine

from iotguard.audit import AuditEvent, AuditSink, EventType
from iotguard.errors import ConfigError, IotGuardError
from iotguard.hub.stores._sql import aware_utc as _aware
from iotguard.hub.stores._sql import utc as _utc
from iotguard.hub.stores.consent import (
    UNNAMED_SUBJECT,
    SqlConsentStore,
    consent_events,
    consent_pushes,
    subject_devices,
)
from iotguard.hub.stores.data_keys import SubjectKeyring
from iotguard.hub.stores.devices import SqlDeviceStore
from iotguard.hub.stores.receipts import SqlLedgerStore, SqlReceiptStore, budget_ledger, receipts
from iotguard.hub.stores.subject_ledger import SqlSubjectLedgerStore
from iotguard.hub.stores.subjects import SUBJECT_KEK_LABEL, SqlSubjectStore, contributions, erasures, subject_keys
from iotguard.hub.stores.telemetry import SqlTelemetryStore, TelemetryStore
from iotguard.hub.stores.tombstones import add_tombstone, ensure_tombstone_key
from iotguard.keys.keystore import KeyStore
from iotguard.privacy import DataContract, load_contract
from iotguard.privacy.at_rest import subject_owner
from iotguard.privacy.ledger import EPSILON_RESOLUTION

__all__ = [
    "DEFAULT_FALLBACK_RETENTION",
    "SUBJECT_KEK_LABEL",
    "ErasureRecord",
    "PrivacyStore",
    "RetentionReport",
    "SqlLedgerStore",
    "create_privacy_tables",
    "enforce_retention",
    "purpose_of",
]

#: Retention for readings whose model or purpose has no contract entry.
DEFAULT_FALLBACK_RETENTION = timedelta(days=30)

_TABLES = [subject_devices, consent_events, consent_pushes, receipts, budget_ledger, subject_keys, contributions,
           erasures]


def create_privacy_tables(conn: Connection) -> None:
    """Migration ``0300_privacy``."""
    for table in _TABLES:
        table.create(conn, checkfirst=True)


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, datetime):
        return _aware(v).isoformat()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


@dataclass(frozen=True)
class RetentionReport:
    """What one retention run deleted."""

    ran_at: datetime
    deleted: Mapping[str, int]  # "model/purpose" -> readings deleted
    receipts_deleted: int
    unclassified_deleted: int

    @property
    def total(self) -> int:
        """Readings deleted in all."""
        return sum(self.deleted.values()) + self.unclassified_deleted


@dataclass(frozen=True)
class ErasureRecord:
    """What one erasure request deleted, and where the subject's data had gone.

    ``key_shredded`` is true only when the subject's data keys were deleted
    *and* the keys wrapping them (in every earlier database copy too) are
    destroyed in the key store. ``aggregates`` lists
    ``kind:id`` of every aggregate, model or export the subject contributed
    to (they cannot be un-computed; their owners act on them).
    ``pseudonym`` is how the audit log named the subject: the erasure's proof,
    handed to the requester; the hub keeps no link from it to the subject.
    """

    subject_id: str
    erased_at: datetime
    devices: tuple[str, ...]
    readings_deleted: int
    receipts_deleted: int
    consent_events_deleted: int
    key_shredded: bool
    aggregates: tuple[str, ...]
    pseudonym: str = ""
    #: Models the subject contributed to: per model, the versions that held them and the run retraining it
    #: without them (filled by the erasure hooks of :class:`~iotguard.hub.services.consent.ConsentService`).
    models: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain form."""
        return _jsonable(dict(self.__dict__))  # type: ignore[no-any-return]

    def kept_summary(self) -> dict[str, Any]:
        """What the hub keeps (erasure table, audit log): counts and contributions, no subject or device id."""
        return {"readings_deleted": self.readings_deleted, "receipts_deleted": self.receipts_deleted,
                "consent_events_deleted": self.consent_events_deleted, "devices": len(self.devices),
                "key_shredded": self.key_shredded, "aggregates": list(self.aggregates)}


def _contract_or_none(
    model: str, cache: dict[str, DataContract | None], contracts: Callable[[str], DataContract]
) -> DataContract | None:
    if model not in cache:
        try:
            cache[model] = contracts(model)
        except ConfigError:
            cache[model] = None
    return cache[model]


def enforce_retention(
    engine: Engine,
    now: datetime,
    *,
    contracts: Callable[[str], DataContract] = load_contract,
    fallback: timedelta = DEFAULT_FALLBACK_RETENTION,
    audit: AuditSink | None = None,
    actor: str = "hub.retention",
    telemetry: TelemetryStore | None = None,
) -> RetentionReport:
    """Delete every reading held longer than its purpose's retention period.

    A reading's purpose is the ``"p"`` of its stored body; its retention is
    that purpose's in its device model's contract. Readings whose model or
    purpose has no contract entry keep ``fallback``. Receipts are kept as
    long as the longest retention of their model (they vouch for what is
    held). Readings are deleted through the telemetry store. Logs one
    ``privacy.retention`` audit event with the counts.

    Raises:
        StorageError: the database failed (nothing is half-deleted: each
            chunk is one transaction and the job can simply run again).
    """
    now = _utc(now)
    telemetry = telemetry if telemetry is not None else SqlTelemetryStore(engine)
    cache: dict[str, DataContract | None] = {}
    model_of = SqlDeviceStore(engine).device_models()
    shortest = [fallback]
    for m in set(model_of.values()):
        contract = _contract_or_none(m, cache, contracts)
        if contract is not None:
            shortest.extend(p.retention for p in contract.purposes.values())
    doomed: list[int] = []
    counts: dict[str, int] = {}
    unclassified = 0
    for r in telemetry.readings_received_before(now - min(shortest)):
        purpose = purpose_of(r.body)
        model = model_of.get(r.device_id)
        contract = _contract_or_none(model, cache, contracts) if model else None
        spec = contract.purposes.get(purpose) if contract is not None and purpose else None
        keep = spec.retention if spec is not None else fallback
        if r.received_at + keep <= now:
            doomed.append(r.id)
            if spec is None:
                unclassified += 1
            else:
                label = f"{model}/{purpose}"
                counts[label] = counts.get(label, 0) + 1
    telemetry.delete_readings(doomed)
    receipt_store = SqlReceiptStore(engine)
    receipts_deleted = 0
    for model in receipt_store.receipt_models():
        contract = _contract_or_none(model, cache, contracts)
        longest = (max((p.retention for p in contract.purposes.values()), default=fallback)
                   if contract is not None else fallback)
        receipts_deleted += receipt_store.delete_receipts_before(model, now - longest)
    report = RetentionReport(now, dict(sorted(counts.items())), receipts_deleted, unclassified)
    if audit is not None:
        audit.record(AuditEvent("privacy.retention", now, actor, "hub",
                                {"deleted": dict(report.deleted), "unclassified": unclassified,
                                 "receipts": receipts_deleted, "total": report.total}))
    return report


def purpose_of(body: bytes) -> str | None:
    """The purpose a reading body says it was collected for (its ``"p"``), or None."""
    try:
        obj = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, RecursionError, MemoryError):
        return None
    p = obj.get("p") if isinstance(obj, dict) else None
    return p if isinstance(p, str) else None


def _decode_body(body: bytes) -> Any:
    try:
        return _jsonable(cbor2.loads(body))
    except (cbor2.CBORDecodeError, ValueError, RecursionError, MemoryError):
        return {"undecodable": body.hex()}




class PrivacyStore(SqlConsentStore, SqlReceiptStore, SqlSubjectStore):
    """Hub-side privacy operations over the shared database.

    Args:
        engine: The hub database (migrated).
        audit: Where consent changes and erasures are logged; ``None`` only in unit tests.
        keystore: The hub key store holding :data:`SUBJECT_KEK_LABEL` (created
            on first use); needed only for subject keys.
        telemetry: The telemetry store (readings); the SQL one on ``engine`` by default.
    """

    def __init__(self, engine: Engine, *, audit: AuditSink | None = None, keystore: KeyStore | None = None,
                 telemetry: TelemetryStore | None = None, keyring: SubjectKeyring | None = None) -> None:
        self._engine = engine
        self.engine = engine
        self._audit = audit
        self.audit = audit
        self._keystore = keystore
        self._keyring = keyring
        if keystore is not None or keyring is not None:
            self.subject_names = self.audit_name
            self.receipt_cipher = self.subject_keyring()
        self.ledger = SqlLedgerStore(engine)
        self.telemetry: TelemetryStore = telemetry if telemetry is not None else SqlTelemetryStore(
            engine, cipher=self.subject_keyring() if keystore is not None or keyring is not None else None)
        self._devices = SqlDeviceStore(engine)

    # -- access and erasure ------------------------------------------------------

    def export_subject(self, subject_id: str, at: datetime) -> dict[str, Any]:
        """Everything the hub holds about a subject, as a JSON-ready document (access request)."""
        devs = self.devices_of(subject_id)
        dev_rows = []
        for d in devs:
            try:
                rec = self._devices.get_device(d)
            except IotGuardError:
                continue  # linked, but no longer registered
            dev_rows.append({"device_id": rec.device_id, "model": rec.model, "serial": rec.serial,
                             "status": rec.status, "created_at": rec.created_at, "enrolled_at": rec.enrolled_at})
        receipt_rows, ledger = self.receipts_for_export(devs)
        contrib, erased = self.subject_records(subject_id)
        with self._engine.connect() as c:
            events = c.execute(
                consent_events.select().where(consent_events.c.subject_id == subject_id).order_by(consent_events.c.id)
            ).mappings().all()
        doc = {
            "format": "iotguard-subject-export/1",
            "subject": subject_id,
            "audit_pseudonym": self._existing_pseudonym(subject_id),
            "exported_at": _utc(at).isoformat(),
            "devices": dev_rows,
            "consent": {
                "current": {p: {"granted": d.granted, "at": d.at}
                            for p, d in self.consent_state(subject_id).decisions.items()},
                "history": [{"purpose": e["purpose"], "granted": e["granted"], "at": e["at"], "by": e["actor"]}
                            for e in events],
            },
            "readings": [{"device": r.device_id, "topic": r.topic, "received_at": r.received_at,
                          "reading": _decode_body(r.body)} for r in self.telemetry.readings_of(devs) if not r.sealed],
            "privacy_receipts": [{"device": d, "received_at": ra, "claims": _decode_body(bytes(b))}
                                 for d, ra, b in receipt_rows],
            "privacy_loss": [{"device": r["device_id"], "period": r["period"],
                              "epsilon": r["spent_units"] * EPSILON_RESOLUTION} for r in ledger],
            "aggregates": [{"aggregate": r["aggregate_id"], "kind": r["kind"], "description": r["description"],
                            "at": r["contributed_at"]} for r in contrib],
            "erasures": [{"at": r["erased_at"], "summary": json.loads(r["summary"])} for r in erased],
        }
        return _jsonable(doc)  # type: ignore[no-any-return]

    def _existing_pseudonym(self, subject_id: str) -> str:
        """The subject's audit pseudonym if it has a data key (an access request creates none)."""
        if self._keystore is None and self._keyring is None:
            return UNNAMED_SUBJECT
        key = self.subject_keyring().existing_key(subject_owner(subject_id))
        return key.pseudonym() if key is not None else UNNAMED_SUBJECT

    def erase_subject(self, subject_id: str, at: datetime, *, actor: str,
                      pseudonym: str | None = None) -> ErasureRecord:
        """Erase everything held about a subject; logs a ``data.erased`` event under its pseudonym.

        In one transaction: the subject's data keys (its own and those of its
        devices' readings from before they were linked) are shredded, their
        wrapping keys destroyed in the key store, so copies sealed under them
        (exports, backups, PostgreSQL rows awaiting VACUUM) are unreadable;
        the telemetry store deletes the subject's readings; the subject's
        receipts, budget accounting, consent history, device links and
        contribution records are deleted. Aggregates and models the subject contributed
        to cannot be un-computed; they are listed in the record so their
        owners can act on them. The erasure record is kept as proof, under
        the subject's pseudonym only, with a tombstone (ADR 0413) by which a
        restore of an older copy recognises the subject's rows.

        Args:
            pseudonym: The name to log instead of the subject's pseudonym (a restore erasing again, whose
                subject's data key, which derives the pseudonym, is already destroyed: ADR 0413).
        """
        at = _utc(at)
        devs = self.devices_of(subject_id)
        name = pseudonym or self._audit_subject(subject_id, at)
        tomb_key = ensure_tombstone_key(self._engine, self._keystore) if self._keystore is not None else None
        with self._engine.begin() as c:
            if tomb_key is not None:
                add_tombstone(c, tomb_key, subject_id, at)
            # Keys first: on PostgreSQL this waits for ingest transactions still sealing under them.
            aggs, shredded = self.forget_subject_data(c, subject_id, device_ids=devs, at=at)
            n_read = self.telemetry.delete_readings_of(devs, conn=c)
            n_rec = self.forget_devices(c, devs)
            n_consent = self.forget_consent_of(c, subject_id, devs)
            SqlSubjectLedgerStore.forget_subject(c, subject_id)  # central and federated privacy loss
            record = ErasureRecord(subject_id, at, tuple(devs), n_read, n_rec, n_consent, shredded, aggs, name)
            self.record_erasure(c, name, at, actor, json.dumps(record.kept_summary(), sort_keys=True))
        self._record(AuditEvent(EventType.DATA_ERASED.value, at, actor, name, record.kept_summary()))
        return record

    def reading_count(self, device_ids: list[str]) -> int:
        """Readings held for the given devices."""
        return sum(self.telemetry.reading_count(d) for d in device_ids)
