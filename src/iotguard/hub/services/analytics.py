"""Central differential privacy over stored readings, charged to each subject's one ledger.

:class:`AnalyticsService` answers a :class:`~iotguard.analytics.query.StructuredQuery`:
it reads the stored readings (paging, bounded by ``max_rows``), maps each
reading's device to its data subject (the device's own id when no subject is
linked), and releases through :func:`~iotguard.analytics.release` /
:func:`~iotguard.analytics.release_grouped`, which charge the
:class:`~iotguard.analytics.SubjectLedger`'s ``central`` column of every
subject read before any noise is drawn. Each answered and each refused
query is an audit event (the number of subjects read is not in the answer).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

from iotguard.analytics.central import release, release_grouped
from iotguard.analytics.ledger import SubjectLedger
from iotguard.analytics.query import StructuredQuery
from iotguard.audit import AuditEvent, AuditSink, EventType
from iotguard.clock import Clock
from iotguard.errors import BudgetExhausted, IotGuardError, MalformedError
from iotguard.hub.event_counts import EventCounts
from iotguard.hub.stores.telemetry import StoredReading
from iotguard.wire import decode_reading

__all__ = ["AnalyticsService", "ReadingSource", "SubjectMap"]

#: Most readings one query reads (a bound on the work an analyst can ask for).
MAX_ROWS = 2_000_000
_PAGE = 1000


class ReadingSource(Protocol):
    def readings_after(self, after_id: int = 0, *, device_id: str | None = None,
                       limit: int = 1000) -> list[StoredReading]: ...


class SubjectMap(Protocol):
    def subject_of(self, device_id: str) -> str | None: ...


class AnalyticsService:
    """Answers central-DP queries and shows subjects' ledgers.

    Args:
        readings: Stored readings (the telemetry store).
        subjects: Device to data subject links (the consent store).
        ledger: The per-subject privacy-loss ledger.
        audit: Where queries are recorded.
        clock: Time source (the ledger period of a charge).
        max_rows: Most readings one query reads.
    """

    def __init__(self, readings: ReadingSource, subjects: SubjectMap, ledger: SubjectLedger, audit: AuditSink,
                 clock: Clock, *, max_rows: int = MAX_ROWS) -> None:
        self.readings = readings
        self.subjects = subjects
        self.ledger = ledger
        self.audit = audit
        self.clock = clock
        self.max_rows = max_rows
        #: DP queries by this process: ("answered",) or ("refused",) (budget exhausted) -> count (``/metrics``).
        self.queries = EventCounts()

    def _rows(self, sq: StructuredQuery) -> Iterator[tuple[str, str | None, Any]]:
        """``(subject, group value, field value)`` of every stored reading holding the field."""
        subject_of: dict[str, str] = {}
        after, seen = 0, 0
        while True:
            page = self.readings.readings_after(after, limit=_PAGE)
            if not page:
                return
            for r in page:
                seen += 1
                if seen > self.max_rows:
                    raise MalformedError(f"query would read more than {self.max_rows} readings")
                try:
                    fields = decode_reading(r.body).fields
                except IotGuardError:
                    continue  # not a reading this query can read (undecodable bodies are never values)
                if sq.field not in fields:
                    continue
                if r.device_id not in subject_of:
                    subject_of[r.device_id] = self.subjects.subject_of(r.device_id) or r.device_id
                group = fields.get(sq.group_by) if sq.group_by else None
                yield subject_of[r.device_id], None if group is None else str(group), fields[sq.field]
            after = page[-1].id

    def query(self, sq: StructuredQuery, *, actor: str) -> dict[str, Any]:
        """Answer a query, charging every subject read (all or nothing).

        Raises:
            MalformedError: non-numeric values for a numeric statistic, or too many readings.
            BudgetExhausted: a subject's budget would be exceeded; nothing is spent.
        """
        now = self.clock.now()
        q = sq.query
        charger = self.ledger.for_source("central")
        rows = list(self._rows(sq))
        if q.statistic in ("sum", "mean", "quantile"):
            for _, _, v in rows:
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise MalformedError(f"field {sq.field} holds a value that is not a finite number")
        details: dict[str, Any] = {"source": "central", "statistic": q.statistic, "field": sq.field,
                                   "epsilon": q.epsilon, "purpose": sq.purpose,
                                   "max_per_subject": q.max_per_subject}
        try:
            if sq.group_by is not None:
                grouped = release_grouped(q, sq.groups, [(s, g, v) for s, g, v in rows if g is not None],
                                          charger, sq.purpose, now)
                answer: dict[str, Any] = {"statistic": q.statistic, "epsilon": q.epsilon,
                                          "group_by": sq.group_by,
                                          "groups": {g: r.to_dict() for g, r in grouped.items()}}
            else:
                answer = release(q, [(s, v) for s, _, v in rows], charger, sq.purpose, now).to_dict()
        except BudgetExhausted:
            self.audit.record(AuditEvent(EventType.PRIVACY_BUDGET_SPENT.value, now, actor, "analytics",
                                         {**details, "refused": True}))
            self.queries.add("refused")
            raise
        self.audit.record(AuditEvent(EventType.PRIVACY_BUDGET_SPENT.value, now, actor, "analytics",
                                     {**details, "refused": False}))
        self.queries.add("answered")
        return {**answer, "purpose": sq.purpose, "field": sq.field}

    def budget(self, subject_id: str) -> dict[str, Any]:
        """A subject's ledger: loss per period and kind, the budget, what is left now."""
        lines = self.ledger.statement(subject_id)
        return {"subject": subject_id, "budget_epsilon": self.ledger.budget_epsilon,
                "period_s": int(self.ledger.period.total_seconds()),
                "composition": "basic (sequential) composition of pure epsilon-DP: local + central + federated",
                "remaining_now": round(self.ledger.remaining(subject_id, self.clock.now()), 6),
                "periods": [line.to_dict() for line in lines]}
