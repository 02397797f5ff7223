"""Privacy receipts and the hub's copy of each device's privacy-loss ledger.

Tables (part of migration ``0300_privacy``): ``privacy_receipts`` (verified,
signed receipts as received) and ``privacy_budget_ledger`` (a
:class:`~iotguard.privacy.LedgerStore` per device and period).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.audit import AuditEvent, EventType
from iotguard.errors import (
    BudgetExhausted,
    IntegrityError,
    KeyStoreError,
    MalformedError,
    StorageError,
)
from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import AuditedSqlStore
from iotguard.hub.stores._sql import utc as _utc
from iotguard.hub.stores.data_keys import SEALED_DOCUMENT_MAGIC, SubjectKeyring
from iotguard.privacy.contract import DataContract
from iotguard.privacy.ledger import EPSILON_RESOLUTION
from iotguard.privacy.receipt import PrivacyReceipt, decode_receipt, verify_receipt

__all__ = ["ReceiptStore", "SqlLedgerStore", "SqlReceiptStore", "budget_event", "budget_ledger", "receipts",
           "verified_claims"]

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

#: Migration 1510 (ADR 1504): one row per (device, signature), so two hub processes storing the same
#: receipt at once cannot both insert it. Not on the Table: created by the migration only.
RECEIPT_ONCE_INDEX = "uq_privacy_receipts_device_signature"


def add_receipt_once_index(conn: Connection) -> None:
    """Migration ``1510_receipt_once``: drop duplicate receipts (keeping the first stored), then a
    unique index on (device_id, signature)."""
    first = select(func.min(receipts.c.id)).group_by(receipts.c.device_id, receipts.c.signature).scalar_subquery()
    conn.execute(delete(receipts).where(receipts.c.id.not_in(first)))
    # Plain DDL (SQLite and PostgreSQL): an ``Index`` object would attach itself to the shared Table.
    conn.execute(text("CREATE UNIQUE INDEX IF NOT EXISTS uq_privacy_receipts_device_signature "
                      "ON privacy_receipts (device_id, signature)"))


budget_ledger = Table(
    "privacy_budget_ledger",
    metadata,
    Column("device_id", String(64), nullable=False),
    Column("period", BigInteger, nullable=False),
    Column("spent_units", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("device_id", "period"),
)


class _Refused(Exception):
    """Rolls back an all-or-nothing charge (internal)."""


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

    def spend_within(self, device_id: str, period: int, units: int, limit: int, purpose: str,
                     at: datetime) -> int | None:
        """Compare-and-add in one statement: ``UPDATE ... WHERE spent_units + units <= limit``.

        The row lock the UPDATE takes (PostgreSQL re-evaluates the condition on
        the row it waited for; SQLite serialises writers) makes check-then-spend
        atomic across processes. A missing row is inserted; losing an insert
        race to another ledger retries the conditional update.
        """
        if units > limit:
            return None
        cond = (budget_ledger.c.device_id == device_id, budget_ledger.c.period == period)
        for _ in range(2):
            try:
                with self._engine.begin() as c:
                    res = c.execute(
                        update(budget_ledger)
                        .where(*cond, budget_ledger.c.spent_units + units <= limit)
                        .values(spent_units=budget_ledger.c.spent_units + units, updated_at=_utc(at))
                        .returning(budget_ledger.c.spent_units)
                    ).scalar()
                    if res is not None:
                        return int(res)
                    if c.execute(select(budget_ledger.c.spent_units).where(*cond)).scalar() is not None:
                        return None
                    c.execute(budget_ledger.insert().values(
                        device_id=device_id, period=period, spent_units=units, updated_at=_utc(at)))
                    return units
            except SqlIntegrityError:
                continue  # another ledger inserted the row first: retry the conditional update
        raise StorageError("privacy ledger row could not be created or updated")

    def spend_all_within(self, device_ids: Sequence[str], period: int, units: int, limit: int, purpose: str,
                         at: datetime) -> bool:
        """All-or-nothing :meth:`spend_within` over many ids in one transaction.

        Rows are updated in sorted order (no lock-order deadlock between two
        queries); a refused id raises inside the transaction, rolling back the
        others.
        """
        if units > limit:
            return False
        ids = sorted(set(device_ids))
        for _ in range(3):
            try:
                with self._engine.begin() as c:
                    for d in ids:
                        cond = (budget_ledger.c.device_id == d, budget_ledger.c.period == period)
                        res = c.execute(
                            update(budget_ledger)
                            .where(*cond, budget_ledger.c.spent_units + units <= limit)
                            .values(spent_units=budget_ledger.c.spent_units + units, updated_at=_utc(at))
                            .returning(budget_ledger.c.spent_units)
                        ).scalar()
                        if res is not None:
                            continue
                        if c.execute(select(budget_ledger.c.spent_units).where(*cond)).scalar() is not None:
                            raise _Refused
                        c.execute(budget_ledger.insert().values(
                            device_id=d, period=period, spent_units=units, updated_at=_utc(at)))
                return True
            except _Refused:
                return False
            except SqlIntegrityError:
                continue  # another ledger inserted a row first: retry the whole charge
        raise StorageError("privacy ledger rows could not be created or updated")

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



def verified_claims(device_id: str, receipt: PrivacyReceipt | bytes, public_key: bytes,
                    contract: DataContract | None) -> tuple[PrivacyReceipt, dict[str, Any]]:
    """Decode and verify a device's receipt; returns it and its claims.

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
    return r, claims


def budget_event(device_id: str, claims: Mapping[str, Any], received_at: datetime) -> AuditEvent:
    """The ``privacy.budget_spent`` audit event of a stored receipt."""
    return AuditEvent(EventType.PRIVACY_BUDGET_SPENT.value, _utc(received_at), device_id, device_id,
                      {"receipt_readings": claims["count"], "epsilon_spent": float(claims["epsilon_spent"]),
                       "epsilon_period_total": float(claims["epsilon_period_total"]), "period": claims["period"],
                       "config_sha256": claims["config_sha256"]})


class ReceiptStore(Protocol):
    """Verified privacy receipts and the hub's copy of each device's privacy-loss ledger."""

    def store_receipt(self, device_id: str, receipt: PrivacyReceipt | bytes, public_key: bytes,
                      received_at: datetime, *, contract: DataContract | None = None) -> dict[str, Any]:
        """Verify (see :func:`verified_claims`), store once (a resend of a receipt already held, same
        device and signature, is not stored again), and raise the ledger copy to the receipt's total."""
        ...

    def receipts_of(self, device_id: str) -> list[PrivacyReceipt]: ...

    def spent_units(self, device_id: str, period: int) -> int: ...

    def receipt_models(self) -> list[str]: ...

    def delete_receipts_before(self, model: str, before: datetime) -> int: ...


class SqlReceiptStore(AuditedSqlStore):
    """Receipts and ledger copies on SQLite or PostgreSQL.

    With a ``receipt_cipher`` (the hub's subject keyring, ADR 0405) each
    receipt body is stored sealed under its device owner's data key; the
    columns the ledger and retention need stay clear.
    """

    receipt_cipher: SubjectKeyring | None = None

    def _open_receipt(self, stored: bytes) -> bytes | None:
        if self.receipt_cipher is None:
            return None if stored.startswith(SEALED_DOCUMENT_MAGIC) else stored
        try:
            return self.receipt_cipher.open_device_document("receipt", stored)
        except (KeyStoreError, IntegrityError):
            return None  # shredded with its subject

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
        r, claims = verified_claims(device_id, receipt, public_key, contract)
        for _ in range(3):
            try:
                if self._store_once(device_id, r, claims, received_at):
                    self._record(budget_event(device_id, claims, received_at))
                return claims
            except SqlIntegrityError:
                continue  # another hub process stored it (or its ledger row) first: look again
        raise StorageError("privacy receipt could not be stored")

    def _store_once(self, device_id: str, r: PrivacyReceipt, claims: dict[str, Any], received_at: datetime) -> bool:
        """Insert the receipt and raise the ledger copy in one transaction; False if it is already held.
        The unique index (migration 1510) makes a concurrent insert of the same receipt fail instead."""
        units = round(claims["epsilon_period_total"] / EPSILON_RESOLUTION)
        with self._engine.begin() as c:
            held = c.execute(select(receipts.c.id).where(receipts.c.device_id == device_id,
                                                         receipts.c.signature == r.signature).limit(1)).first()
            if held is not None:
                return False  # a resend of one already stored (the device's answer was lost): stored once
            body = r.body if self.receipt_cipher is None else self.receipt_cipher.seal_device_document(
                c, device_id, "receipt", r.body, received_at)
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
                    body=body,
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
        return True

    def seal_clear_receipts(self, at: datetime, *, limit: int = 500) -> int:
        """Seal up to ``limit`` receipt bodies stored clear before ADR 0405, in place; returns how many.

        Raises:
            StorageError: no receipt cipher.
        """
        if self.receipt_cipher is None:
            raise StorageError("sealing receipts needs the hub key store")
        magic = SEALED_DOCUMENT_MAGIC
        with self._engine.begin() as c:
            rows = c.execute(select(receipts.c.id, receipts.c.device_id, receipts.c.body)
                             .where(func.substr(receipts.c.body, 1, len(magic)) != magic)
                             .order_by(receipts.c.id).limit(limit)).all()
            for rid, device_id, body in rows:
                c.execute(update(receipts).where(receipts.c.id == rid).values(
                    body=self.receipt_cipher.seal_device_document(c, device_id, "receipt", bytes(body), at)))
        return len(rows)

    def receipts_of(self, device_id: str) -> list[PrivacyReceipt]:
        """Stored receipts of a device, oldest first (for an auditor to re-verify)."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(receipts.c.body, receipts.c.signature)
                .where(receipts.c.device_id == device_id)
                .order_by(receipts.c.id)
            )
            opened = [(self._open_receipt(bytes(b)), bytes(s)) for b, s in rows]
        return [PrivacyReceipt(b, s) for b, s in opened if b is not None]

    def spent_units(self, device_id: str, period: int) -> int:
        """The hub's copy of a device's privacy loss in ``period`` (ledger units)."""
        return SqlLedgerStore(self._engine).spent_units(device_id, period)

    def receipt_models(self) -> list[str]:
        """Device models that have stored receipts."""
        with self._engine.connect() as c:
            return sorted({r[0] for r in c.execute(select(receipts.c.model).distinct())})

    def delete_receipts_before(self, model: str, before: datetime) -> int:
        """Retention: delete a model's receipts received before ``before``; returns how many."""
        with self._engine.begin() as c:
            res = c.execute(delete(receipts).where(receipts.c.model == model, receipts.c.received_at < before))
            return int(res.rowcount or 0)

    def forget_devices(self, conn: Connection, device_ids: Sequence[str]) -> int:
        """Erasure: delete the devices' receipts and ledger rows in ``conn``'s transaction; returns receipts deleted."""
        n = conn.execute(delete(receipts).where(receipts.c.device_id.in_(list(device_ids)))).rowcount or 0
        conn.execute(delete(budget_ledger).where(budget_ledger.c.device_id.in_(list(device_ids))))
        return int(n)

    def receipts_for_export(self, device_ids: Sequence[str]) -> tuple[list[Any], list[Any]]:
        """(receipt rows, ledger rows) of the devices, for an access request."""
        with self._engine.connect() as c:
            receipt_rows = c.execute(
                select(receipts.c.device_id, receipts.c.received_at, receipts.c.body)
                .where(receipts.c.device_id.in_(list(device_ids)))
                .order_by(receipts.c.id)
            ).all()
            ledger = c.execute(select(budget_ledger).where(budget_ledger.c.device_id.in_(list(device_ids))))
            ledger_rows = list(ledger.mappings().all())
        opened = [(d, ra, self._open_receipt(bytes(b))) for d, ra, b in receipt_rows]
        return [row for row in opened if row[2] is not None], ledger_rows
