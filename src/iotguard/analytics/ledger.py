"""One privacy-loss ledger per data subject: local DP, central DP and federated learning.

A data subject's loss in a budget period is accounted in three separate
columns, never mixed in one number:

* ``local``: the local-DP loss their devices released, as the devices'
  signed privacy receipts report it (each receipt carries its device's
  period total; the subject's local loss is the sum over their devices);
* ``central``: the central-DP queries on the hub that read them;
* ``federated``: federated-learning rounds they took part in.

**Composition rule.** Basic (sequential) composition of pure epsilon-DP:
the subject's loss in a period is ``local + central + federated``, each the
sum of the epsilons of the releases that read the subject. A mechanism
accounted in zero-concentrated DP (Gaussian noise, federated learning)
charges the epsilon of :func:`zcdp_epsilon` at the ledger's ``delta``
(Bun & Steinke 2016, Prop. 1.3: ``rho``-zCDP implies
``(rho + 2 sqrt(rho ln(1/delta)), delta)``-DP); the ledger then states an
``(epsilon, k * delta)`` guarantee for ``k`` such charges.

A central or federated release is refused (:class:`~iotguard.errors.BudgetExhausted`)
when it would take any subject it reads past the budget, counting all three
columns; it is refused for everybody or spent for everybody, in one step of
the store (:meth:`SubjectLedgerStore.spend_all_within`). A refused release
spends nothing. A charge may name a ``once`` key (a federated run's model
version): each subject is charged at most once under one key, in the same
step of the store, so a release that is retried (a secure round that failed
and released nothing) is not charged again. Local releases are made on the device against the data
contract's budget before the hub hears of them, so the hub records them
(it cannot refuse them); a subject's budget should leave room for the
contracts' local budgets. No I/O here.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from iotguard.errors import BudgetExhausted, ConfigError
from iotguard.privacy.ledger import EPSILON_RESOLUTION
from iotguard.privacy.pseudonym import period_number

__all__ = [
    "CHARGED_SOURCES",
    "MAX_ONCE_KEY",
    "InMemorySubjectLedgerStore",
    "LedgerLine",
    "SourceCharges",
    "SubjectLedger",
    "SubjectLedgerStore",
    "zcdp_epsilon",
]

#: Kinds of spending the hub charges (local DP is recorded from receipts instead).
CHARGED_SOURCES = ("central", "federated")
#: Longest ``once`` key of a charge (:meth:`SubjectLedger.charge_all`).
MAX_ONCE_KEY = 200


def _units(epsilon: float) -> int:
    return math.ceil(epsilon / EPSILON_RESOLUTION - 1e-9)


def zcdp_epsilon(rho: float, delta: float) -> float:
    """The epsilon a ``rho``-zCDP release costs at ``delta`` (Bun & Steinke 2016, Prop. 1.3).

    Raises:
        ConfigError: ``rho`` not positive or ``delta`` outside (0, 1).
    """
    if not (math.isfinite(rho) and rho > 0 and 0 < delta < 1):
        raise ConfigError("zCDP conversion needs rho > 0 and 0 < delta < 1")
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


@dataclass(frozen=True)
class LedgerLine:
    """A subject's loss in one budget period, per kind of spending (epsilon)."""

    period: int
    local: float
    central: float
    federated: float

    @property
    def total(self) -> float:
        return self.local + self.central + self.federated

    def to_dict(self) -> dict[str, Any]:
        return {"period": self.period, "local": round(self.local, 6), "central": round(self.central, 6),
                "federated": round(self.federated, 6), "total": round(self.total, 6)}


class SubjectLedgerStore(Protocol):
    """Durable per-subject totals, in :data:`~iotguard.privacy.EPSILON_RESOLUTION` units."""

    def spend_all_within(self, subject_ids: Sequence[str], period: int, source: str, units: int, limit: int,
                         purpose: str, at: datetime, once: str = "") -> bool:
        """Atomically add ``units`` to ``source`` of every subject, or to none.

        Refused (nothing spent, ``False``) when for any subject
        ``local + central + federated + units > limit``. The check and the
        spend are one step in the store, so any number of ledgers over one
        store cannot overspend. With a ``once`` key, subjects already charged
        under it are left out (neither checked nor charged again) and the
        others are recorded under it in the same step.
        """
        ...

    def charged_once(self, once: str) -> set[str]:
        """The subjects charged under the ``once`` key."""
        ...

    def lines(self, subject_id: str) -> list[tuple[int, int, int, int]]:
        """``(period, local, central, federated)`` units of a subject, by period."""
        ...


class InMemorySubjectLedgerStore:
    """A :class:`SubjectLedgerStore` in dicts (tests, simulations); local totals are fed in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, set[str]] = {}
        self._local: dict[tuple[str, int], int] = {}
        self._charged: dict[tuple[str, int, str], int] = {}
        self._once: dict[str, set[str]] = {}

    def link(self, subject_id: str, device_id: str) -> None:
        """The subject's readings come from ``device_id``."""
        with self._lock:
            self._devices.setdefault(subject_id, set()).add(device_id)

    def record_local(self, device_id: str, period: int, total_units: int) -> None:
        """A device receipt's period total (monotone: a lower total changes nothing)."""
        with self._lock:
            key = (device_id, period)
            self._local[key] = max(self._local.get(key, 0), total_units)

    def _local_of(self, subject_id: str, period: int) -> int:
        devices = self._devices.get(subject_id) or {subject_id}
        return sum(self._local.get((d, period), 0) for d in devices)

    def _total(self, subject_id: str, period: int) -> int:
        return self._local_of(subject_id, period) + sum(
            self._charged.get((subject_id, period, s), 0) for s in CHARGED_SOURCES)

    def spend_all_within(self, subject_ids: Sequence[str], period: int, source: str, units: int, limit: int,
                         purpose: str, at: datetime, once: str = "") -> bool:
        with self._lock:
            done = self._once.get(once, set()) if once else set()
            ids = sorted(set(subject_ids) - done)
            if any(self._total(s, period) + units > limit for s in ids):
                return False
            for s in ids:
                key = (s, period, source)
                self._charged[key] = self._charged.get(key, 0) + units
            if once:
                self._once.setdefault(once, set()).update(ids)
            return True

    def charged_once(self, once: str) -> set[str]:
        with self._lock:
            return set(self._once.get(once, set()))

    def lines(self, subject_id: str) -> list[tuple[int, int, int, int]]:
        with self._lock:
            devices = self._devices.get(subject_id) or {subject_id}
            periods = {p for (s, p, _src) in self._charged if s == subject_id}
            periods |= {p for (d, p) in self._local if d in devices}
            return [(p, self._local_of(subject_id, p), self._charged.get((subject_id, p, "central"), 0),
                     self._charged.get((subject_id, p, "federated"), 0)) for p in sorted(periods)]


class SourceCharges:
    """A :class:`SubjectLedger` bound to one kind of spending (what :func:`~iotguard.analytics.release` charges)."""

    def __init__(self, ledger: SubjectLedger, source: str) -> None:
        self._ledger = ledger
        self.source = source

    def charge_all(self, subjects: Sequence[str], epsilon: float, purpose: str, at: datetime) -> int:
        """See :meth:`SubjectLedger.charge_all`."""
        return self._ledger.charge_all(subjects, epsilon, self.source, purpose, at)


class SubjectLedger:
    """Caps each data subject's privacy loss per period across every kind of spending.

    Args:
        store: Where totals live.
        budget_epsilon: Loss allowed per subject per period (all kinds together).
        period: Length of a budget period (periods start at the Unix epoch;
            device receipts must use the same period length to be counted in it).

    Raises:
        ConfigError: negative budget or non-positive period.
    """

    def __init__(self, store: SubjectLedgerStore, budget_epsilon: float, period: timedelta) -> None:
        if not math.isfinite(budget_epsilon) or budget_epsilon < 0:
            raise ConfigError("privacy budget must be a non-negative number")
        if period.total_seconds() <= 0:
            raise ConfigError("budget period must be positive")
        self.store = store
        self.budget_epsilon = budget_epsilon
        self.period = period
        self._limit = math.floor(budget_epsilon / EPSILON_RESOLUTION + 1e-9)

    def period_of(self, at: datetime) -> int:
        """Budget period number holding ``at``."""
        return period_number(at, self.period)

    def for_source(self, source: str) -> SourceCharges:
        """This ledger charging ``source`` (``central`` or ``federated``).

        Raises:
            ConfigError: unknown source.
        """
        if source not in CHARGED_SOURCES:
            raise ConfigError(f"the hub charges only {', '.join(CHARGED_SOURCES)} releases")
        return SourceCharges(self, source)

    def charge_all(self, subjects: Sequence[str], epsilon: float, source: str, purpose: str, at: datetime, *,
                   once: str = "") -> int:
        """Charge ``epsilon`` of ``source`` to every subject a release reads, all or none; returns how many.

        Call before drawing any noise. With ``once`` (at most 200 characters), a subject already charged
        under that key is not charged again (a retried release of one model version); the count includes it.

        Raises:
            BudgetExhausted: some subject would pass the budget (nothing spent for anyone).
            ConfigError: bad ``epsilon`` or ``source``.
        """
        if source not in CHARGED_SOURCES:
            raise ConfigError(f"the hub charges only {', '.join(CHARGED_SOURCES)} releases")
        if not math.isfinite(epsilon) or epsilon < 0:
            raise ConfigError("privacy loss must be a non-negative number")
        if len(once) > MAX_ONCE_KEY:
            raise ConfigError(f"a charge's once key is at most {MAX_ONCE_KEY} characters")
        ids = sorted(set(subjects))
        units = _units(epsilon)
        if units > self._limit or not self.store.spend_all_within(ids, self.period_of(at), source, units,
                                                                  self._limit, purpose, at, once):
            raise BudgetExhausted(
                f"{source} release of epsilon {epsilon:g} for {purpose!r} would exceed the budget "
                f"{self.budget_epsilon:g} of at least one of its {len(ids)} subjects; nothing was spent")
        return len(ids)

    def charged_once(self, once: str) -> set[str]:
        """The subjects already charged under the ``once`` key (see :meth:`charge_all`)."""
        return self.store.charged_once(once) if once else set()

    def statement(self, subject_id: str) -> list[LedgerLine]:
        """The subject's loss per period and kind, oldest period first."""
        r = EPSILON_RESOLUTION
        return [LedgerLine(p, lo * r, c * r, f * r) for p, lo, c, f in self.store.lines(subject_id)]

    def remaining(self, subject_id: str, at: datetime) -> float:
        """Loss still available to the subject in the period holding ``at``."""
        period = self.period_of(at)
        spent = sum(lo + c + f for p, lo, c, f in self.store.lines(subject_id) if p == period)
        return max(0, self._limit - spent) * EPSILON_RESOLUTION
