"""The per-device privacy-loss ledger.

Local DP releases about one device compose sequentially: releasing values
with losses ``eps_1, eps_2, ...`` about the same person is ``sum(eps_i)``-DP.
The ledger adds up the loss each device has released within a budget
period and refuses, *before* any noise is drawn, a release that would take
the total past the contract's budget. Refusal is
:class:`~iotguard.errors.BudgetExhausted`; the caller drops the release.

Persistence goes through :class:`LedgerStore`. On a device
:class:`KeyStoreLedgerStore` keeps the running total in a monotonic counter
of the key store, so a reboot or a restored file cannot hand the budget
back; the hub keeps its copy of the accounting (from receipts) in SQL.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from iotguard.errors import BudgetExhausted, ConfigError
from iotguard.keys.keystore import KeyStore
from iotguard.privacy.pseudonym import period_number

__all__ = [
    "EPSILON_RESOLUTION",
    "InMemoryLedgerStore",
    "KeyStoreLedgerStore",
    "LedgerStore",
    "PrivacyLossLedger",
    "Spend",
]

#: Losses are accounted in integer units of this size, rounded up (never under-counted).
EPSILON_RESOLUTION = 1e-6


def _units(epsilon: float) -> int:
    return math.ceil(epsilon / EPSILON_RESOLUTION - 1e-9)


class LedgerStore(Protocol):
    """Durable running totals of privacy loss, in :data:`EPSILON_RESOLUTION` units."""

    def spent_units(self, device_id: str, period: int) -> int:
        """Units spent by ``device_id`` in ``period`` (0 if none)."""
        ...

    def add_units(self, device_id: str, period: int, units: int, purpose: str, at: datetime) -> int:
        """Durably add ``units``; returns the new total."""
        ...

    def spend_within(self, device_id: str, period: int, units: int, limit: int, purpose: str,
                     at: datetime) -> int | None:
        """Atomically add ``units`` only if the total stays ``<= limit``.

        The check and the spend are one step *in the store*, so any number of
        ledger instances (threads, processes, hubs) over one store cannot
        overspend. Returns the new total, or ``None`` (nothing spent) when the
        spend would pass ``limit``.
        """
        ...

    def spend_all_within(self, device_ids: Sequence[str], period: int, units: int, limit: int, purpose: str,
                         at: datetime) -> bool:
        """Atomically add ``units`` to every id, or to none if any would pass ``limit``.

        A central query charges every subject it reads; refused, it spends nothing.
        """
        ...


class InMemoryLedgerStore:
    """A :class:`LedgerStore` in a dict, for tests and simulations."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def spent_units(self, device_id: str, period: int) -> int:
        with self._lock:
            return self._spent.get((device_id, period), 0)

    def add_units(self, device_id: str, period: int, units: int, purpose: str, at: datetime) -> int:
        with self._lock:
            total = self._spent.get((device_id, period), 0) + units
            self._spent[(device_id, period)] = total
            return total

    def spend_all_within(self, device_ids: Sequence[str], period: int, units: int, limit: int, purpose: str,
                         at: datetime) -> bool:
        ids = sorted(set(device_ids))
        with self._lock:
            if any(self._spent.get((d, period), 0) + units > limit for d in ids):
                return False
            for d in ids:
                self._spent[(d, period)] = self._spent.get((d, period), 0) + units
            return True

    def spend_within(self, device_id: str, period: int, units: int, limit: int, purpose: str,
                     at: datetime) -> int | None:
        with self._lock:
            total = self._spent.get((device_id, period), 0) + units
            if total > limit:
                return None
            self._spent[(device_id, period)] = total
            return total


class KeyStoreLedgerStore:
    """A :class:`LedgerStore` on the key store's persistent monotonic counters (device side)."""

    def __init__(self, keystore: KeyStore) -> None:
        self._ks = keystore
        self._lock = threading.Lock()

    @staticmethod
    def _name(device_id: str, period: int) -> str:
        return f"privacy-loss/{device_id}/{period}"

    def spent_units(self, device_id: str, period: int) -> int:
        return self._ks.counter(self._name(device_id, period))

    def add_units(self, device_id: str, period: int, units: int, purpose: str, at: datetime) -> int:
        with self._lock:
            name = self._name(device_id, period)
            return self._ks.advance_counter(name, self._ks.counter(name) + units)

    def spend_within(self, device_id: str, period: int, units: int, limit: int, purpose: str,
                     at: datetime) -> int | None:
        # A device's key store has one owner process (the agent); this lock makes
        # check-then-advance one step for every ledger in that process.
        with self._lock:
            name = self._name(device_id, period)
            current = self._ks.counter(name)
            if current + units > limit:
                return None
            return self._ks.advance_counter(name, current + units)

    def spend_all_within(self, device_ids: Sequence[str], period: int, units: int, limit: int, purpose: str,
                         at: datetime) -> bool:
        ids = sorted(set(device_ids))
        with self._lock:
            names = [self._name(d, period) for d in ids]
            if any(self._ks.counter(n) + units > limit for n in names):
                return False
            for n in names:
                self._ks.advance_counter(n, self._ks.counter(n) + units)
            return True


@dataclass(frozen=True)
class Spend:
    """One accepted charge."""

    device_id: str
    period: int
    epsilon: float
    total: float
    budget: float


class PrivacyLossLedger:
    """Accounts and caps the privacy loss released by each device per period.

    Args:
        store: Where running totals live.
        budget_epsilon: Total loss allowed per device per period.
        period: Length of a budget period (periods start at the Unix epoch).

    Raises:
        ConfigError: negative budget or non-positive period.
    """

    def __init__(self, store: LedgerStore, budget_epsilon: float, period: timedelta) -> None:
        if not math.isfinite(budget_epsilon) or budget_epsilon < 0:
            raise ConfigError("privacy budget must be a non-negative number")
        if period.total_seconds() <= 0:
            raise ConfigError("budget period must be positive")
        self._store = store
        self.budget_epsilon = budget_epsilon
        self.period = period
        self._budget_units = math.floor(budget_epsilon / EPSILON_RESOLUTION + 1e-9)

    def period_of(self, at: datetime) -> int:
        """Budget period number holding ``at``."""
        return period_number(at, self.period)

    def spent(self, device_id: str, at: datetime) -> float:
        """Loss spent by ``device_id`` in the period holding ``at``."""
        return self._store.spent_units(device_id, self.period_of(at)) * EPSILON_RESOLUTION

    def remaining(self, device_id: str, at: datetime) -> float:
        """Loss still available to ``device_id`` in the period holding ``at``."""
        units = self._budget_units - self._store.spent_units(device_id, self.period_of(at))
        return max(0, units) * EPSILON_RESOLUTION

    def charge(self, device_id: str, epsilon: float, purpose: str, at: datetime) -> Spend:
        """Charge a release of loss ``epsilon``, or refuse it.

        Call before drawing any noise; a refused release must not happen.

        Raises:
            BudgetExhausted: the release would take the period's total past the budget.
            ConfigError: ``epsilon`` is negative or not finite.
        """
        if not math.isfinite(epsilon) or epsilon < 0:
            raise ConfigError("privacy loss must be a non-negative number")
        period = self.period_of(at)
        units = _units(epsilon)
        # Check and spend are one atomic step in the store (not a lock in this
        # instance): two ledgers over one store cannot both pass the check.
        total = self._store.spend_within(device_id, period, units, self._budget_units, purpose, at)
        if total is None:
            spent = self._store.spent_units(device_id, period)
            raise BudgetExhausted(
                f"release of epsilon {epsilon:g} for {purpose!r} would exceed the budget "
                f"{self.budget_epsilon:g} (spent {spent * EPSILON_RESOLUTION:g} this period)"
            )
        return Spend(device_id, period, epsilon, total * EPSILON_RESOLUTION, self.budget_epsilon)

    def charge_all(self, subjects: Sequence[str], epsilon: float, purpose: str, at: datetime) -> int:
        """Charge ``epsilon`` to every subject a release reads, all or none; returns how many.

        Raises:
            BudgetExhausted: some subject's period total would pass the budget
                (nothing is spent for anyone).
            ConfigError: ``epsilon`` is negative or not finite.
        """
        if not math.isfinite(epsilon) or epsilon < 0:
            raise ConfigError("privacy loss must be a non-negative number")
        ids = sorted(set(subjects))
        if not self._store.spend_all_within(ids, self.period_of(at), _units(epsilon), self._budget_units,
                                            purpose, at):
            raise BudgetExhausted(
                f"release of epsilon {epsilon:g} for {purpose!r} would exceed the budget "
                f"{self.budget_epsilon:g} of at least one of its {len(ids)} subjects; nothing was spent"
            )
        return len(ids)
