"""The hub's privacy state: consent, receipts, budget ledger, subject keys, erasure.

Tables (migration ``0300_privacy``):

- ``privacy_subject_devices`` which data subject owns which device;
- ``privacy_consent_events`` every grant and withdrawal, append-only (the
  current :class:`~iotguard.privacy.ConsentState` is their fold);
- ``privacy_consent_pushes`` each consent configuration pushed, and the device's ack;
- ``privacy_receipts`` verified, signed privacy receipts as received;
- ``privacy_budget_ledger`` the hub's copy of each device's privacy-loss
  accounting per period (a :class:`~iotguard.privacy.LedgerStore`);
- ``privacy_subject_keys`` per-subject data keys, wrapped under a hub key,
  for copies the hub cannot later reach (exports handed out, backups);
  deleting the row crypto-shreds every such copy;
- ``privacy_contributions`` which aggregates a subject's data went into;
- ``privacy_erasures`` the record of each erasure.

Every consent change, retention run and erasure is an audit event through
the one :class:`~iotguard.audit.AuditSink` passed in.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from iotguard.audit import AuditEvent, AuditSink, EventType
from iotguard.errors import (
    BudgetExhausted,
    ConfigError,
    ConsentError,
    IntegrityError,
    KeyStoreError,
    MalformedError,
)
from iotguard.hub.db import metadata
from iotguard.hub.migrations import Migration, register
from iotguard.hub.schema import devices, readings
from iotguard.keys.keystore import KeyKind, KeyStore
from iotguard.privacy import DataContract, load_contract
from iotguard.privacy.consent import ConsentAck, ConsentConfig, ConsentDecision, ConsentState
from iotguard.privacy.ledger import EPSILON_RESOLUTION
from iotguard.privacy.receipt import PrivacyReceipt, decode_receipt, verify_receipt

__all__ = [
    "DEFAULT_FALLBACK_RETENTION",
    "SUBJECT_KEK_LABEL",
    "ErasureRecord",
    "PrivacyStore",
    "RetentionReport",
    "SqlLedgerStore",
    "enforce_retention",
]

#: Retention for readings whose model or purpose has no contract entry.
DEFAULT_FALLBACK_RETENTION = timedelta(days=30)
#: Hub key-store label of the AES key that wraps per-subject data keys.
SUBJECT_KEK_LABEL = "privacy-subject-kek"
_DELETE_CHUNK = 500

subject_devices = Table(
    "privacy_subject_devices",
    metadata,
    Column("subject_id", String(128), nullable=False),
    Column("device_id", String(64), nullable=False, unique=True),
    Column("linked_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("subject_id", "device_id"),
)

consent_events = Table(
    "privacy_consent_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subject_id", String(128), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
)

consent_pushes = Table(
    "privacy_consent_pushes",
    metadata,
    Column("device_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("config_sha256", LargeBinary(32), nullable=False),
    Column("pushed_at", DateTime(timezone=True), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=True),  # from the device's ack
    Column("acked_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("device_id", "version"),
)

receipts = Table(
    "privacy_receipts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False, index=True),
    Column("model", String(64), nullable=False),
    Column("contract_version", Integer, nullable=False),
    Column("config_sha256", LargeBinary(32), nullable=False),
    Column("count", Integer, nullable=False),
    Column("epsilon_spent", Float, nullable=False),
    Column("period", BigInteger, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("body", LargeBinary, nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)

budget_ledger = Table(
    "privacy_budget_ledger",
    metadata,
    Column("device_id", String(64), nullable=False),
    Column("period", BigInteger, nullable=False),
    Column("spent_units", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("device_id", "period"),
)

subject_keys = Table(
    "privacy_subject_keys",
    metadata,
    Column("subject_id", String(128), primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

contributions = Table(
    "privacy_contributions",
    metadata,
    Column("subject_id", String(128), nullable=False),
    Column("aggregate_id", String(128), nullable=False),
    Column("description", Text, nullable=False),
    Column("contributed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("subject_id", "aggregate_id"),
)

erasures = Table(
    "privacy_erasures",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subject_id", String(128), nullable=False, index=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("summary", Text, nullable=False),  # JSON: counts, devices, aggregates
)

_TABLES = [
    subject_devices,
    consent_events,
    consent_pushes,
    receipts,
    budget_ledger,
    subject_keys,
    contributions,
    erasures,
]


def _apply(conn: Connection) -> None:
    for table in _TABLES:
        table.create(conn, checkfirst=True)


register(Migration("0300_privacy", "consent, receipts, budget ledger, subject keys, erasure records", _apply))


def _aware(dt: datetime) -> datetime:
    # SQLite hands back naive datetimes; iotguard stores UTC only.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ConfigError("time must be timezone-aware UTC")
    return dt.astimezone(UTC)


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


class SqlLedgerStore:
    """The hub's :class:`~iotguard.privacy.LedgerStore` in ``privacy_budget_ledger``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def spent_units(self, device_id: str, period: int) -> int:
        with self._engine.connect() as c:
            v = c.execute(
                select(budget_ledger.c.spent_units).where(
                    budget_ledger.c.device_id == device_id, budget_ledger.c.period == period
                )
            ).scalar()
        return int(v or 0)

    def add_units(self, device_id: str, period: int, units: int, purpose: str, at: datetime) -> int:
        with self._engine.begin() as c:
            return self._add(c, device_id, period, units, at)

    @staticmethod
    def _add(c: Connection, device_id: str, period: int, units: int, at: datetime) -> int:
        cond = (budget_ledger.c.device_id == device_id, budget_ledger.c.period == period)
        res = c.execute(
            update(budget_ledger)
            .where(*cond)
            .values(spent_units=budget_ledger.c.spent_units + units, updated_at=_utc(at))
        )
        if res.rowcount == 0:
            c.execute(
                budget_ledger.insert().values(
                    device_id=device_id, period=period, spent_units=units, updated_at=_utc(at)
                )
            )
        return int(c.execute(select(budget_ledger.c.spent_units).where(*cond)).scalar_one())


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
    """What one erasure request deleted, and where the subject's data had gone."""

    subject_id: str
    erased_at: datetime
    devices: tuple[str, ...]
    readings_deleted: int
    receipts_deleted: int
    consent_events_deleted: int
    key_shredded: bool
    aggregates: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain form."""
        return _jsonable(dict(self.__dict__))  # type: ignore[no-any-return]


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
) -> RetentionReport:
    """Delete every reading held longer than its purpose's retention period.

    A reading's purpose is the ``"p"`` of its stored body; its retention is
    that purpose's in its device model's contract. Readings whose model or
    purpose has no contract entry keep ``fallback``. Receipts are kept as
    long as the longest retention of their model (they vouch for what is
    held). Logs one ``privacy.retention`` audit event with the counts.

    Raises:
        StorageError: the database failed (nothing is half-deleted: each
            chunk is one transaction and the job can simply run again).
    """
    now = _utc(now)
    cache: dict[str, DataContract | None] = {}
    with engine.connect() as c:
        models = [r[0] for r in c.execute(select(devices.c.model).distinct())]
    shortest = [fallback]
    for m in models:
        contract = _contract_or_none(m, cache, contracts)
        if contract is not None:
            shortest.extend(p.retention for p in contract.purposes.values())
    horizon = now - min(shortest)
    doomed: list[int] = []
    counts: dict[str, int] = {}
    unclassified = 0
    q = (
        select(readings.c.id, readings.c.received_at, readings.c.body, devices.c.model)
        .select_from(readings.outerjoin(devices, devices.c.device_id == readings.c.device_id))
        .where(readings.c.received_at < horizon)
    )
    with engine.connect() as c:
        for rid, received, body, model in c.execute(q):
            purpose = _purpose_of(body)
            contract = _contract_or_none(model, cache, contracts) if model else None
            spec = contract.purposes.get(purpose) if contract is not None and purpose else None
            keep = spec.retention if spec is not None else fallback
            if _aware(received) + keep <= now:
                doomed.append(rid)
                if spec is None:
                    unclassified += 1
                else:
                    label = f"{model}/{purpose}"
                    counts[label] = counts.get(label, 0) + 1
    for i in range(0, len(doomed), _DELETE_CHUNK):
        with engine.begin() as c:
            c.execute(delete(readings).where(readings.c.id.in_(doomed[i : i + _DELETE_CHUNK])))
    receipts_deleted = 0
    with engine.begin() as c:
        for model in {r[0] for r in c.execute(select(receipts.c.model).distinct())}:
            contract = _contract_or_none(model, cache, contracts)
            longest = (
                max((p.retention for p in contract.purposes.values()), default=fallback)
                if contract is not None
                else fallback
            )
            res = c.execute(
                delete(receipts).where(receipts.c.model == model, receipts.c.received_at < now - longest)
            )
            receipts_deleted += res.rowcount or 0
    report = RetentionReport(now, dict(sorted(counts.items())), receipts_deleted, unclassified)
    if audit is not None:
        audit.record(
            AuditEvent(
                "privacy.retention",
                now,
                actor,
                "hub",
                {
                    "deleted": dict(report.deleted),
                    "unclassified": unclassified,
                    "receipts": receipts_deleted,
                    "total": report.total,
                },
            )
        )
    return report


def _purpose_of(body: bytes) -> str | None:
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


class PrivacyStore:
    """Hub-side privacy operations over the shared database.

    Args:
        engine: The hub database (migrated).
        audit: Where consent changes and erasures are logged; ``None`` only in unit tests.
        keystore: The hub key store holding :data:`SUBJECT_KEK_LABEL` (created
            on first use); needed only for subject keys.
    """

    def __init__(
        self, engine: Engine, *, audit: AuditSink | None = None, keystore: KeyStore | None = None
    ) -> None:
        self._engine = engine
        self.engine = engine
        self._audit = audit
        self._keystore = keystore
        self.ledger = SqlLedgerStore(engine)

    def _record(self, event: AuditEvent) -> None:
        if self._audit is not None:
            self._audit.record(event)

    # -- subjects and consent --------------------------------------------

    def link_device(self, subject_id: str, device_id: str, at: datetime) -> None:
        """Record that ``subject_id`` owns ``device_id`` (a device has one owner)."""
        with self._engine.begin() as c:
            c.execute(delete(subject_devices).where(subject_devices.c.device_id == device_id))
            c.execute(
                subject_devices.insert().values(
                    subject_id=subject_id, device_id=device_id, linked_at=_utc(at)
                )
            )

    def devices_of(self, subject_id: str) -> list[str]:
        """Devices owned by ``subject_id``."""
        with self._engine.connect() as c:
            return sorted(
                r[0]
                for r in c.execute(
                    select(subject_devices.c.device_id).where(subject_devices.c.subject_id == subject_id)
                )
            )

    def subject_of(self, device_id: str) -> str | None:
        """Owner of ``device_id``, if known."""
        with self._engine.connect() as c:
            return c.execute(
                select(subject_devices.c.subject_id).where(subject_devices.c.device_id == device_id)
            ).scalar()

    def consent_state(self, subject_id: str) -> ConsentState:
        """The subject's current consent state (version = number of changes)."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(consent_events)
                .where(consent_events.c.subject_id == subject_id)
                .order_by(consent_events.c.id)
            ).all()
        decisions: dict[str, ConsentDecision] = {}
        for r in rows:
            decisions[r.purpose] = ConsentDecision(bool(r.granted), _aware(r.at))
        return ConsentState(subject_id, len(rows), MappingProxyType(decisions))

    def set_consent(
        self,
        subject_id: str,
        purpose: str,
        granted: bool,
        at: datetime,
        *,
        actor: str,
        contract: DataContract | None = None,
    ) -> ConsentState:
        """Grant or withdraw consent for a purpose; logs a ``consent.changed`` event.

        Args:
            contract: When given, ``purpose`` must be declared in it.

        Raises:
            PolicyDenied: ``purpose`` is not declared in ``contract``.
            RollbackError: ``at`` is older than the purpose's last decision.
        """
        if contract is not None:
            contract.purpose(purpose)
        at = _utc(at)
        before = self.consent_state(subject_id)
        after = before.grant(purpose, at) if granted else before.withdraw(purpose, at)
        with self._engine.begin() as c:
            c.execute(
                consent_events.insert().values(
                    subject_id=subject_id, purpose=purpose, granted=granted, at=at, actor=actor
                )
            )
        self._record(
            AuditEvent(
                EventType.CONSENT_CHANGED.value,
                at,
                actor,
                subject_id,
                {
                    "purpose": purpose,
                    "granted": granted,
                    "version": after.version,
                    "devices": self.devices_of(subject_id),
                },
            )
        )
        return after

    def consent_configs(self, subject_id: str, issued_at: datetime) -> list[ConsentConfig]:
        """Build, and record as pushed, the consent configuration of each of the subject's devices.

        The transport sends ``config.encode()`` to ``config.device_id``; the
        device answers with a :class:`~iotguard.privacy.ConsentAck` that
        :meth:`record_consent_ack` checks against this record.
        """
        state = self.consent_state(subject_id)
        configs = [state.to_config(d, issued_at) for d in self.devices_of(subject_id)]
        with self._engine.begin() as c:
            for cfg in configs:
                c.execute(
                    delete(consent_pushes).where(
                        consent_pushes.c.device_id == cfg.device_id, consent_pushes.c.version == state.version
                    )
                )
                c.execute(
                    consent_pushes.insert().values(
                        device_id=cfg.device_id,
                        version=state.version,
                        config_sha256=cfg.digest(),
                        pushed_at=_utc(issued_at),
                    )
                )
        return configs

    def record_consent_ack(self, ack: ConsentAck, received_at: datetime) -> None:
        """Check a device's acknowledgement against the configuration pushed to it, and store it.

        Raises:
            ConsentError: no such configuration was pushed to the device, or
                the device applied a different one.
        """
        cond = (consent_pushes.c.device_id == ack.device_id, consent_pushes.c.version == ack.version)
        with self._engine.begin() as c:
            pushed = c.execute(select(consent_pushes.c.config_sha256).where(*cond)).scalar()
            if pushed is None or bytes(pushed) != ack.config_sha256:
                raise ConsentError("device acknowledged a consent configuration the hub did not push")
            c.execute(
                update(consent_pushes)
                .where(*cond)
                .values(applied_at=_utc(ack.applied_at), acked_at=_utc(received_at))
            )

    def unacknowledged_consent(self) -> list[tuple[str, int]]:
        """(device, version) of pushed configurations the device has not acknowledged yet."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(consent_pushes.c.device_id, consent_pushes.c.version)
                .where(consent_pushes.c.acked_at.is_(None))
                .order_by(consent_pushes.c.device_id, consent_pushes.c.version)
            )
            return [(r[0], int(r[1])) for r in rows]

    # -- receipts ------------------------------------------------------------

    def store_receipt(
        self,
        device_id: str,
        receipt: PrivacyReceipt | bytes,
        public_key: bytes,
        received_at: datetime,
        *,
        contract: DataContract | None = None,
    ) -> dict[str, Any]:
        """Verify a device's privacy receipt, store it and update the hub's ledger copy.

        Args:
            device_id: The authenticated sender (from the channel, not the receipt).
            receipt: The receipt or its wire bytes.
            public_key: The device's receipt-signing Ed25519 public key.
            received_at: When it arrived.
            contract: The device model's contract; when given, the receipt must
                name its model and version and stay within its budget.

        Returns:
            The verified claims.

        Raises:
            IntegrityError: the signature does not verify.
            MalformedError: malformed, or about another device, model or contract version.
            BudgetExhausted: the receipt admits a period total above the contract's budget.
        """
        r = decode_receipt(receipt) if isinstance(receipt, bytes) else receipt
        claims = verify_receipt(r, public_key)
        if claims["device"] != device_id:
            raise MalformedError("privacy receipt names another device")
        if contract is not None:
            if (
                claims["model"] != contract.model
                or claims["contract_version"] != contract.version
                or claims["contract_sha256"] != contract.digest()
            ):
                raise MalformedError("privacy receipt is for another data contract (model or version)")
            if claims["epsilon_period_total"] > contract.budget_epsilon * (1 + 1e-9):
                raise BudgetExhausted(
                    f"device {device_id} reports privacy loss {claims['epsilon_period_total']:g} "
                    f"over its budget {contract.budget_epsilon:g}"
                )
        units = round(claims["epsilon_period_total"] / EPSILON_RESOLUTION)
        with self._engine.begin() as c:
            c.execute(
                receipts.insert().values(
                    device_id=device_id,
                    model=claims["model"],
                    contract_version=claims["contract_version"],
                    config_sha256=claims["config_sha256"],
                    count=claims["count"],
                    epsilon_spent=float(claims["epsilon_spent"]),
                    period=claims["period"],
                    issued_at=datetime.fromtimestamp(claims["issued_at"], tz=UTC),
                    received_at=_utc(received_at),
                    body=r.body,
                    signature=r.signature,
                )
            )
            spent = SqlLedgerStore(self._engine)
            current = c.execute(
                select(budget_ledger.c.spent_units).where(
                    budget_ledger.c.device_id == device_id, budget_ledger.c.period == claims["period"]
                )
            ).scalar()
            if units > int(current or 0):
                spent._add(c, device_id, claims["period"], units - int(current or 0), received_at)
        self._record(
            AuditEvent(
                EventType.PRIVACY_BUDGET_SPENT.value,
                _utc(received_at),
                device_id,
                device_id,
                {
                    "receipt_readings": claims["count"],
                    "epsilon_spent": float(claims["epsilon_spent"]),
                    "epsilon_period_total": float(claims["epsilon_period_total"]),
                    "period": claims["period"],
                    "config_sha256": claims["config_sha256"],
                },
            )
        )
        return claims

    def receipts_of(self, device_id: str) -> list[PrivacyReceipt]:
        """Stored receipts of a device, oldest first (for an auditor to re-verify)."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(receipts.c.body, receipts.c.signature)
                .where(receipts.c.device_id == device_id)
                .order_by(receipts.c.id)
            )
            return [PrivacyReceipt(bytes(b), bytes(s)) for b, s in rows]

    # -- aggregates, keys ------------------------------------------------------

    def record_contribution(self, subject_id: str, aggregate_id: str, description: str, at: datetime) -> None:
        """Record that the subject's data went into an aggregate (a DP query, a model, an export)."""
        with self._engine.begin() as c:
            c.execute(
                delete(contributions).where(
                    contributions.c.subject_id == subject_id, contributions.c.aggregate_id == aggregate_id
                )
            )
            c.execute(
                contributions.insert().values(
                    subject_id=subject_id,
                    aggregate_id=aggregate_id,
                    description=description,
                    contributed_at=_utc(at),
                )
            )

    def _kek(self) -> KeyStore:
        if self._keystore is None:
            raise KeyStoreError("subject keys need the hub key store")
        if not self._keystore.has_key(SUBJECT_KEK_LABEL):
            self._keystore.generate(SUBJECT_KEK_LABEL, KeyKind.AES256)
        return self._keystore

    def seal_for_subject(self, subject_id: str, plaintext: bytes, at: datetime) -> bytes:
        """Encrypt data about a subject under the subject's own key (created on first use).

        Use it for every copy the hub will not be able to reach later (an
        export handed out, a backup): erasing the subject destroys the key
        and with it every such copy.

        Raises:
            KeyStoreError: no hub key store.
        """
        ks = self._kek()
        ad = b"iotguard subject key|" + subject_id.encode()
        with self._engine.begin() as c:
            wrapped = c.execute(
                select(subject_keys.c.wrapped_key).where(subject_keys.c.subject_id == subject_id)
            ).scalar()
            if wrapped is None:
                key = AESGCM.generate_key(bit_length=256)
                c.execute(
                    subject_keys.insert().values(
                        subject_id=subject_id,
                        wrapped_key=ks.seal(SUBJECT_KEK_LABEL, key, ad),
                        created_at=_utc(at),
                    )
                )
            else:
                key = ks.unseal(SUBJECT_KEK_LABEL, bytes(wrapped), ad)
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(key).encrypt(nonce, plaintext, subject_id.encode())

    def open_for_subject(self, subject_id: str, sealed: bytes) -> bytes:
        """Decrypt :meth:`seal_for_subject` output.

        Raises:
            KeyStoreError: the subject's key was shredded (or never existed).
            IntegrityError: the data was altered.
        """
        ks = self._kek()
        with self._engine.connect() as c:
            wrapped = c.execute(
                select(subject_keys.c.wrapped_key).where(subject_keys.c.subject_id == subject_id)
            ).scalar()
        if wrapped is None:
            raise KeyStoreError("no key for this subject (erased?)")
        key = ks.unseal(SUBJECT_KEK_LABEL, bytes(wrapped), b"iotguard subject key|" + subject_id.encode())
        if len(sealed) < 28:
            raise IntegrityError("sealed subject data is truncated")
        try:
            return AESGCM(key).decrypt(sealed[:12], sealed[12:], subject_id.encode())
        except InvalidTag:
            raise IntegrityError("sealed subject data failed authentication") from None

    # -- access and erasure ------------------------------------------------------

    def export_subject(self, subject_id: str, at: datetime) -> dict[str, Any]:
        """Everything the hub holds about a subject, as a JSON-ready document (access request)."""
        devs = self.devices_of(subject_id)
        with self._engine.connect() as c:
            dev_rows = (
                c.execute(
                    select(
                        devices.c.device_id,
                        devices.c.model,
                        devices.c.serial,
                        devices.c.status,
                        devices.c.created_at,
                        devices.c.enrolled_at,
                    ).where(devices.c.device_id.in_(devs))
                )
                .mappings()
                .all()
            )
            reading_rows = c.execute(
                select(readings.c.device_id, readings.c.topic, readings.c.received_at, readings.c.body)
                .where(readings.c.device_id.in_(devs))
                .order_by(readings.c.id)
            ).all()
            receipt_rows = c.execute(
                select(receipts.c.device_id, receipts.c.received_at, receipts.c.body)
                .where(receipts.c.device_id.in_(devs))
                .order_by(receipts.c.id)
            ).all()
            events = (
                c.execute(
                    select(consent_events)
                    .where(consent_events.c.subject_id == subject_id)
                    .order_by(consent_events.c.id)
                )
                .mappings()
                .all()
            )
            contrib = (
                c.execute(select(contributions).where(contributions.c.subject_id == subject_id))
                .mappings()
                .all()
            )
            ledger = (
                c.execute(select(budget_ledger).where(budget_ledger.c.device_id.in_(devs))).mappings().all()
            )
            erased = c.execute(select(erasures).where(erasures.c.subject_id == subject_id)).mappings().all()
        doc = {
            "format": "iotguard-subject-export/1",
            "subject": subject_id,
            "exported_at": _utc(at).isoformat(),
            "devices": [dict(r) for r in dev_rows],
            "consent": {
                "current": {
                    p: {"granted": d.granted, "at": d.at}
                    for p, d in self.consent_state(subject_id).decisions.items()
                },
                "history": [
                    {"purpose": e["purpose"], "granted": e["granted"], "at": e["at"], "by": e["actor"]}
                    for e in events
                ],
            },
            "readings": [
                {"device": d, "topic": t, "received_at": ra, "reading": _decode_body(bytes(b))}
                for d, t, ra, b in reading_rows
            ],
            "privacy_receipts": [
                {"device": d, "received_at": ra, "claims": _decode_body(bytes(b))}
                for d, ra, b in receipt_rows
            ],
            "privacy_loss": [
                {
                    "device": r["device_id"],
                    "period": r["period"],
                    "epsilon": r["spent_units"] * EPSILON_RESOLUTION,
                }
                for r in ledger
            ],
            "aggregates": [
                {"aggregate": r["aggregate_id"], "description": r["description"], "at": r["contributed_at"]}
                for r in contrib
            ],
            "erasures": [{"at": r["erased_at"], "summary": json.loads(r["summary"])} for r in erased],
        }
        return _jsonable(doc)  # type: ignore[no-any-return]

    def erase_subject(self, subject_id: str, at: datetime, *, actor: str) -> ErasureRecord:
        """Erase everything held about a subject; logs a ``data.erased`` event.

        Deletes the subject's readings, receipts, budget accounting, consent
        history, device links and contribution records, and shreds the
        subject's data key so copies sealed under it (exports, backups)
        become unreadable. Aggregates the subject had contributed to cannot
        be un-computed; they are listed in the erasure record (and the audit
        event) so their owners can act on them. The erasure record itself
        is kept as proof of erasure.
        """
        at = _utc(at)
        devs = self.devices_of(subject_id)
        with self._engine.begin() as c:
            aggs = tuple(
                sorted(
                    r[0]
                    for r in c.execute(
                        select(contributions.c.aggregate_id).where(contributions.c.subject_id == subject_id)
                    )
                )
            )
            n_read = c.execute(delete(readings).where(readings.c.device_id.in_(devs))).rowcount or 0
            n_rec = c.execute(delete(receipts).where(receipts.c.device_id.in_(devs))).rowcount or 0
            c.execute(delete(budget_ledger).where(budget_ledger.c.device_id.in_(devs)))
            c.execute(delete(consent_pushes).where(consent_pushes.c.device_id.in_(devs)))
            n_consent = (
                c.execute(delete(consent_events).where(consent_events.c.subject_id == subject_id)).rowcount
                or 0
            )
            c.execute(delete(contributions).where(contributions.c.subject_id == subject_id))
            shredded = (
                c.execute(delete(subject_keys).where(subject_keys.c.subject_id == subject_id)).rowcount or 0
            ) > 0
            c.execute(delete(subject_devices).where(subject_devices.c.subject_id == subject_id))
            record = ErasureRecord(subject_id, at, tuple(devs), n_read, n_rec, n_consent, shredded, aggs)
            summary = record.to_dict()
            c.execute(
                erasures.insert().values(
                    subject_id=subject_id,
                    erased_at=at,
                    actor=actor,
                    summary=json.dumps(summary, sort_keys=True),
                )
            )
        self._record(
            AuditEvent(
                EventType.DATA_ERASED.value,
                at,
                actor,
                subject_id,
                {k: v for k, v in summary.items() if k not in ("subject_id", "erased_at")},
            )
        )
        return record

    def erasures_of(self, subject_id: str) -> list[dict[str, Any]]:
        """Erasure records for a subject."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(erasures.c.summary).where(erasures.c.subject_id == subject_id).order_by(erasures.c.id)
            )
            return [json.loads(r[0]) for r in rows]

    def reading_count(self, device_ids: list[str]) -> int:
        """Readings held for the given devices."""
        with self._engine.connect() as c:
            return int(
                c.execute(
                    select(func.count()).select_from(readings).where(readings.c.device_id.in_(device_ids))
                ).scalar_one()
            )
