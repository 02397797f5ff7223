"""The per-subject privacy-loss ledger in SQL (migration ``0340_subject_ledger``).

``privacy_subject_ledger`` holds one row per subject and budget period with
the hub's own charges in separate columns (``central_units``,
``federated_units``). Local-DP loss is *not* copied into it: it is read,
at charge time, from the devices' receipt totals in ``privacy_budget_ledger``
(written only by the receipt store) through the subject's device links.
Keeping the two apart is the fix for round two's masking defect, where a
central spend raised the same row a later receipt's period total was
compared with, hiding part of that receipt's increase.

``privacy_subject_charges`` (migration ``0341_subject_ledger_charge_once``)
names the subjects a keyed charge has charged (``once``: a federated run's
model version), one row per key and subject under a primary key, written in
the charge's own transaction: a retried release is charged to a subject at
most once, even when two hub processes retry it at the same moment (the
second insert conflicts and the whole charge is retried, seeing the first).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    PrimaryKeyConstraint,
    String,
    Table,
    and_,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from iotguard.analytics.ledger import CHARGED_SOURCES
from iotguard.errors import ConfigError, StorageError
from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import utc
from iotguard.hub.stores.consent import subject_devices
from iotguard.hub.stores.receipts import budget_ledger

__all__ = ["SqlSubjectLedgerStore", "create_subject_charge_once_table", "create_subject_ledger_tables",
           "subject_charges", "subject_ledger"]

subject_ledger = Table(
    "privacy_subject_ledger",
    metadata,
    Column("subject_id", String(128), nullable=False),
    Column("period", BigInteger, nullable=False),
    Column("central_units", BigInteger, nullable=False),
    Column("federated_units", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("subject_id", "period"),
)


subject_charges = Table(
    "privacy_subject_charges",
    metadata,
    Column("charge_key", String(200), nullable=False),
    Column("subject_id", String(128), nullable=False),
    Column("period", BigInteger, nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("charged_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("charge_key", "subject_id"),
)


def create_subject_ledger_tables(conn: Connection) -> None:
    """Migration ``0340_subject_ledger``."""
    subject_ledger.create(conn, checkfirst=True)


def create_subject_charge_once_table(conn: Connection) -> None:
    """Migration ``0341_subject_ledger_charge_once``: which subjects a keyed charge has charged."""
    subject_charges.create(conn, checkfirst=True)


class _Refused(Exception):
    """Rolls back an all-or-nothing charge (internal)."""


def _local_units(subject_id: str, period: int) -> object:
    """Scalar subquery: the subject's local-DP units (its linked devices' receipt totals, or its own id's)."""
    linked = select(subject_devices.c.device_id).where(subject_devices.c.subject_id == subject_id)
    mine = or_(budget_ledger.c.device_id.in_(linked),
               and_(budget_ledger.c.device_id == subject_id, ~exists(linked)))
    return (select(func.coalesce(func.sum(budget_ledger.c.spent_units), 0))
            .where(budget_ledger.c.period == period, mine).scalar_subquery())


class SqlSubjectLedgerStore:
    """A :class:`~iotguard.analytics.SubjectLedgerStore` on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def spend_all_within(self, subject_ids: Sequence[str], period: int, source: str, units: int, limit: int,
                         purpose: str, at: datetime, once: str = "") -> bool:
        """One transaction: per subject (sorted, so two charges cannot deadlock) a conditional UPDATE.

        ``UPDATE ... SET <source> = <source> + units WHERE central + federated
        + units + local <= limit``: the row lock serialises charges of one
        subject (PostgreSQL re-checks the condition on the row it waited
        for; SQLite has one writer), and a refusal rolls back the others.
        """
        if source not in CHARGED_SOURCES:
            raise ConfigError(f"unknown ledger source {source!r}")
        col = subject_ledger.c[f"{source}_units"]
        ids = sorted(set(subject_ids))
        for _ in range(3):
            try:
                with self._engine.begin() as c:
                    todo = ids
                    if once:
                        done = self._charged_once(c, once)
                        todo = [s for s in ids if s not in done]
                    for s in todo:
                        if once:  # first: a concurrent charge under the same key waits here, then conflicts
                            c.execute(subject_charges.insert().values(charge_key=once, subject_id=s, period=period,
                                                                      units=units, charged_at=utc(at)))
                        self._charge_one(c, s, period, col, units, limit, at)
                return True
            except _Refused:
                return False
            except SqlIntegrityError:
                continue  # another charge created a subject's row (or once-row) first: retry the whole charge
        raise StorageError("privacy ledger rows could not be created or updated")

    @staticmethod
    def _charge_one(c: Connection, s: str, period: int, col: object, units: int, limit: int,
                    at: datetime) -> None:
        key = (subject_ledger.c.subject_id == s, subject_ledger.c.period == period)
        if c.execute(select(subject_ledger.c.period).where(*key)).first() is None:
            c.execute(subject_ledger.insert().values(subject_id=s, period=period, central_units=0,
                                                     federated_units=0, updated_at=utc(at)))
        spent = subject_ledger.c.central_units + subject_ledger.c.federated_units
        res = c.execute(
            update(subject_ledger)
            .where(*key, spent + units + _local_units(s, period) <= limit)
            .values({col: col + units, "updated_at": utc(at)})  # type: ignore[operator]
        )
        if res.rowcount != 1:
            raise _Refused

    @staticmethod
    def _charged_once(c: Connection, once: str) -> set[str]:
        return {str(s) for (s,) in c.execute(select(subject_charges.c.subject_id)
                                             .where(subject_charges.c.charge_key == once))}

    def charged_once(self, once: str) -> set[str]:
        with self._engine.connect() as c:
            return self._charged_once(c, once)

    @staticmethod
    def forget_subject(conn: Connection, subject_id: str) -> int:
        """Erasure: delete the subject's central and federated rows in ``conn``'s transaction; returns how many."""
        conn.execute(subject_charges.delete().where(subject_charges.c.subject_id == subject_id))
        return int(conn.execute(subject_ledger.delete().where(subject_ledger.c.subject_id == subject_id)).rowcount
                   or 0)

    def lines(self, subject_id: str) -> list[tuple[int, int, int, int]]:
        with self._engine.connect() as c:
            charged = {int(p): (int(ce), int(fe)) for p, ce, fe in c.execute(
                select(subject_ledger.c.period, subject_ledger.c.central_units, subject_ledger.c.federated_units)
                .where(subject_ledger.c.subject_id == subject_id))}
            linked = [r[0] for r in c.execute(
                select(subject_devices.c.device_id).where(subject_devices.c.subject_id == subject_id))]
            local: dict[int, int] = {}
            for p, u in c.execute(
                    select(budget_ledger.c.period, func.sum(budget_ledger.c.spent_units))
                    .where(budget_ledger.c.device_id.in_(linked or [subject_id]))
                    .group_by(budget_ledger.c.period)):
                local[int(p)] = int(u)
        periods = sorted(set(charged) | set(local))
        return [(p, local.get(p, 0), *charged.get(p, (0, 0))) for p in periods]
