"""Attempt limiting with lockout for enrollment and API logins.

Per key (a device id, an API token id, a client address) the limiter keeps a
token bucket, which bounds the attempt rate, and a count of consecutive
failures: after :attr:`AttemptLimits.max_failures` of them the key is locked
out for a period that doubles (by :attr:`AttemptLimits.lockout_growth`) with
each further lockout, up to :attr:`AttemptLimits.max_lockout`. A success
resets both the count and the growth. The limiter is pure (no I/O; time is a
parameter) and holds at most :attr:`AttemptLimits.max_keys` keys, least
recently used evicted first — skipping keys that are locked out right now,
so flooding the limiter with fresh keys does not lift a lockout.

Callers check the key before verifying the credential, then record the
outcome::

    limiter.check(("enroll", client_addr), now)      # raises LockedOut
    limiter.check(("enroll-device", device_id), now)
    ...verify...
    limiter.record_failure(...) / limiter.record_success(...)

Checking both the client address and the targeted identity stops both a
single client guessing many identities and many clients guessing one.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta

from iotguard.errors import AuthenticationError, ConfigError

__all__ = ["AttemptLimiter", "AttemptLimits", "LockedOut"]

#: Locked entries skipped per eviction before the oldest is evicted anyway
#: (bounds the work of one call when the whole table is locked).
_EVICTION_SCAN = 16


class LockedOut(AuthenticationError):
    """Too many attempts or consecutive failures for this key; retry later.

    Attributes:
        retry_after: Seconds until the next attempt can succeed the check.
    """

    code = "locked_out"

    def __init__(self, message: str = "", *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class AttemptLimits:
    """Bounds of an :class:`AttemptLimiter`.

    Attributes:
        rate_per_s: Bucket refill rate (attempts per second, sustained).
        burst: Bucket capacity (attempts allowed back to back).
        max_failures: Consecutive failures that trigger a lockout.
        base_lockout: First lockout period.
        lockout_growth: Factor applied to each further lockout.
        max_lockout: Longest lockout period.
        forget_after: A key with no failure for this long starts afresh.
        max_keys: Most keys held (LRU).
    """

    rate_per_s: float = 0.5
    burst: int = 10
    max_failures: int = 5
    base_lockout: timedelta = timedelta(minutes=1)
    lockout_growth: float = 2.0
    max_lockout: timedelta = timedelta(hours=1)
    forget_after: timedelta = timedelta(days=1)
    max_keys: int = 100_000

    def check(self) -> None:
        """Raises:
        ConfigError: a bound out of range.
        """
        if not (0 < self.rate_per_s <= 1_000 and 1 <= self.burst <= 10_000 and 1 <= self.max_failures <= 1_000):
            raise ConfigError("rate_per_s must be in (0, 1000], burst 1..10000, max_failures 1..1000")
        if not (timedelta(0) < self.base_lockout <= self.max_lockout <= timedelta(days=7)):
            raise ConfigError("need 0 < base_lockout <= max_lockout <= 7 days")
        if not (1.0 <= self.lockout_growth <= 16.0) or self.forget_after < self.max_lockout:
            raise ConfigError("lockout_growth must be 1..16 and forget_after at least max_lockout")
        if not 1 <= self.max_keys <= 10_000_000:
            raise ConfigError("max_keys must be 1..10000000")


@dataclass
class _Entry:
    tokens: float
    refilled_at: datetime
    failures: int = 0
    lockouts: int = 0
    locked_until: datetime | None = None
    last_failure: datetime | None = None


class AttemptLimiter:
    """Token bucket plus growing lockout per key, bounded in memory.

    Args:
        limits: Bounds; defaults to :class:`AttemptLimits()`.

    Raises:
        ConfigError: invalid limits.
    """

    def __init__(self, limits: AttemptLimits | None = None) -> None:
        self.limits = limits or AttemptLimits()
        self.limits.check()
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, key: Hashable, now: datetime) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(tokens=float(self.limits.burst), refilled_at=now)
            self._entries[key] = entry
            self._evict(now)
        else:
            self._entries.move_to_end(key)
            if entry.last_failure is not None and now - entry.last_failure >= self.limits.forget_after \
                    and (entry.locked_until is None or now >= entry.locked_until):
                entry.failures = 0
                entry.lockouts = 0
                entry.last_failure = None
        return entry

    def _evict(self, now: datetime) -> None:
        scanned = 0
        while len(self._entries) > self.limits.max_keys:
            key, oldest = next(iter(self._entries.items()))
            if oldest.locked_until is not None and now < oldest.locked_until and scanned < _EVICTION_SCAN:
                self._entries.move_to_end(key)
                scanned += 1
                continue
            del self._entries[key]

    def _refill(self, entry: _Entry, now: datetime) -> None:
        elapsed = max(0.0, (now - entry.refilled_at).total_seconds())
        entry.tokens = min(float(self.limits.burst), entry.tokens + elapsed * self.limits.rate_per_s)
        entry.refilled_at = max(now, entry.refilled_at)

    def check(self, key: Hashable, now: datetime) -> None:
        """Admit one attempt for ``key`` (consumes a bucket token).

        Raises:
            LockedOut: the key is locked out, or its bucket is empty.
        """
        with self._lock:
            entry = self._entry(key, now)
            if entry.locked_until is not None and now < entry.locked_until:
                raise LockedOut("locked out after repeated failures",
                                retry_after=(entry.locked_until - now).total_seconds())
            self._refill(entry, now)
            if entry.tokens < 1.0:
                wait = (1.0 - entry.tokens) / self.limits.rate_per_s
                raise LockedOut("too many attempts", retry_after=math.ceil(wait * 1000) / 1000)
            entry.tokens -= 1.0

    def record_failure(self, key: Hashable, now: datetime) -> timedelta | None:
        """Count a failed attempt; locks the key out after too many in a row.

        Returns:
            The lockout period started by this failure, or None.
        """
        with self._lock:
            entry = self._entry(key, now)
            entry.failures += 1
            entry.last_failure = now
            if entry.failures < self.limits.max_failures:
                return None
            lim = self.limits
            seconds = lim.base_lockout.total_seconds() * lim.lockout_growth ** min(entry.lockouts, 64)
            period = min(timedelta(seconds=min(seconds, lim.max_lockout.total_seconds())), lim.max_lockout)
            entry.locked_until = now + period
            entry.lockouts += 1
            entry.failures = 0
            return period

    def record_success(self, key: Hashable, now: datetime) -> None:
        """A successful attempt: clears the failure count and the lockout growth."""
        with self._lock:
            entry = self._entry(key, now)
            entry.failures = 0
            entry.lockouts = 0
            entry.locked_until = None
            entry.last_failure = None

    def locked_until(self, key: Hashable) -> datetime | None:
        """End of the key's current or last lockout (None if never locked or unknown)."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.locked_until
