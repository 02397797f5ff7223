"""Attempt limiting with lockout for enrollment and API logins.

Per key (a device id, an API token id, a client address) the limiter keeps a
token bucket, which bounds the attempt rate, and a count of consecutive
failures: after :attr:`AttemptLimits.max_failures` of them the key is locked
out for a period that doubles (by :attr:`AttemptLimits.lockout_growth`) with
each further lockout, up to :attr:`AttemptLimits.max_lockout`. A success
resets both the count and the growth. Time is a parameter. The state per key
lives in an :class:`AttemptStore`: in process memory by default
(:class:`InMemoryAttemptStore`, at most :attr:`AttemptLimits.max_keys` keys,
least recently used evicted first — skipping keys that are locked out right
now, so flooding the limiter with fresh keys does not lift a lockout), or in
the hub database (:class:`iotguard.hub.ratelimit_store.SqlAttemptStore`) so
limits and lockouts hold across hub processes.

Callers check the key before verifying the credential, then record the
outcome::

    limiter.check(("enroll", client_addr), now)      # raises LockedOut
    limiter.check(("enroll-device", device_id), now)
    ...verify...
    limiter.record_failure(...) / limiter.record_success(...)

Checking both the client address and the targeted identity stops both a
single client guessing many identities and many clients guessing one.

Behind a NAT or gateway many clients share one address. :meth:`admit` and
:meth:`is_locked` let a caller verify the credential anyway while a key is
locked out, refuse with :class:`LockedOut` if it fails, and let it through
if it verifies: guesses from a locked address keep failing (and keep the
lockout going), while a device or operator holding a real credential is not
locked out by its neighbours (see :mod:`iotguard.hub.device_plane`).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from iotguard.errors import AuthenticationError, ConfigError

__all__ = ["Attempt", "AttemptLimiter", "AttemptLimits", "AttemptState", "AttemptStore", "InMemoryAttemptStore",
           "LockedOut", "attempt_key"]

_T = TypeVar("_T")

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


@dataclass(frozen=True)
class AttemptState:
    """What is remembered about one key.

    Attributes:
        tokens: Bucket level at ``refilled_at``.
        refilled_at: Time of the last refill.
        failures: Consecutive failures since the last lockout or success.
        lockouts: Lockouts since the last success (the growth exponent).
        locked_until: End of the current or last lockout.
        last_failure: Time of the last failure.
    """

    tokens: float
    refilled_at: datetime
    failures: int = 0
    lockouts: int = 0
    locked_until: datetime | None = None
    last_failure: datetime | None = None

    def locked_at(self, now: datetime) -> bool:
        """True while a lockout is running."""
        return self.locked_until is not None and now < self.locked_until


#: Changes one key's state; returns the new state and a result for the caller.
AttemptChange = Callable[[AttemptState | None], tuple[AttemptState, _T]]


class AttemptStore(Protocol):
    """Where attempt state lives; every backend passes ``tests/hub/test_ratelimit_store.py``."""

    def update(self, key: str, change: Callable[[AttemptState | None], tuple[AttemptState, _T]],
               now: datetime) -> _T:
        """Apply ``change`` to the state of ``key`` atomically (read, change, write as one step).

        ``change`` may raise; then nothing is written. It may be called more
        than once (an optimistic store retries after a concurrent write).
        """
        ...

    def get(self, key: str) -> AttemptState | None:
        """The stored state of ``key`` (None if unknown)."""
        ...


def attempt_key(key: Hashable) -> str:
    """The text form of a limiter key (tuples joined; long keys hashed to a bounded length)."""
    text = "\x1f".join(str(k) for k in key) if isinstance(key, tuple) else str(key)
    if len(text) > 200:
        text = text[:128] + "#" + hashlib.sha256(text.encode()).hexdigest()
    return text


class InMemoryAttemptStore:
    """:class:`AttemptStore` in process memory: bounded, LRU, locked keys survive a key flood."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._entries: OrderedDict[str, AttemptState] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, key: str, change: Callable[[AttemptState | None], tuple[AttemptState, _T]],
               now: datetime) -> _T:
        with self._lock:
            state, result = change(self._entries.get(key))
            known = key in self._entries
            self._entries[key] = state
            self._entries.move_to_end(key)
            if not known:
                self._evict(now)
            return result

    def get(self, key: str) -> AttemptState | None:
        with self._lock:
            return self._entries.get(key)

    def _evict(self, now: datetime) -> None:
        scanned = 0
        while len(self._entries) > self.max_keys:
            key, oldest = next(iter(self._entries.items()))
            if oldest.locked_at(now) and scanned < _EVICTION_SCAN:
                self._entries.move_to_end(key)
                scanned += 1
                continue
            del self._entries[key]


class AttemptLimiter:
    """Token bucket plus growing lockout per key.

    Args:
        limits: Bounds; defaults to :class:`AttemptLimits()`.
        store: Where state lives; in memory (bounded by ``limits.max_keys``) when None.

    Raises:
        ConfigError: invalid limits.
    """

    def __init__(self, limits: AttemptLimits | None = None, store: AttemptStore | None = None) -> None:
        self.limits = limits or AttemptLimits()
        self.limits.check()
        self.store: AttemptStore = store if store is not None else InMemoryAttemptStore(self.limits.max_keys)

    def __len__(self) -> int:
        return len(self.store) if isinstance(self.store, InMemoryAttemptStore) else 0

    def _fresh(self, state: AttemptState | None, now: datetime) -> AttemptState:
        """The state as of ``now``: created full, old failures forgotten, bucket refilled."""
        lim = self.limits
        if state is None:
            return AttemptState(tokens=float(lim.burst), refilled_at=now)
        if state.last_failure is not None and now - state.last_failure >= lim.forget_after \
                and not state.locked_at(now):
            state = replace(state, failures=0, lockouts=0, last_failure=None)
        elapsed = max(0.0, (now - state.refilled_at).total_seconds())
        return replace(state, tokens=min(float(lim.burst), state.tokens + elapsed * lim.rate_per_s),
                       refilled_at=max(now, state.refilled_at))

    def admit(self, key: Hashable, now: datetime) -> bool:
        """Consume a bucket token for ``key``; return whether the key is locked out right now.

        Raises:
            LockedOut: the bucket is empty (too many attempts, failed or not).
        """

        def change(old: AttemptState | None) -> tuple[AttemptState, bool]:
            state = self._fresh(old, now)
            if state.locked_at(now):
                return state, True
            if state.tokens < 1.0:
                wait = (1.0 - state.tokens) / self.limits.rate_per_s
                raise LockedOut("too many attempts", retry_after=math.ceil(wait * 1000) / 1000)
            return replace(state, tokens=state.tokens - 1.0), False

        return self.store.update(attempt_key(key), change, now)

    def check(self, key: Hashable, now: datetime) -> None:
        """Admit one attempt for ``key`` (consumes a bucket token).

        Raises:
            LockedOut: the key is locked out, or its bucket is empty.
        """
        if self.admit(key, now):
            raise LockedOut("locked out after repeated failures", retry_after=self.retry_after(key, now))

    def is_locked(self, key: Hashable, now: datetime) -> bool:
        """Whether ``key`` is locked out right now (consumes nothing)."""
        state = self.store.get(attempt_key(key))
        return state is not None and state.locked_at(now)

    def retry_after(self, key: Hashable, now: datetime) -> float:
        """Seconds until ``key``'s lockout ends (0 when not locked)."""
        until = self.locked_until(key)
        return max(0.0, (until - now).total_seconds()) if until is not None else 0.0

    def record_failure(self, key: Hashable, now: datetime) -> timedelta | None:
        """Count a failed attempt; locks the key out after too many in a row.

        Returns:
            The lockout period started by this failure, or None.
        """
        lim = self.limits

        def change(old: AttemptState | None) -> tuple[AttemptState, timedelta | None]:
            state = self._fresh(old, now)
            failures = state.failures + 1
            if failures < lim.max_failures:
                return replace(state, failures=failures, last_failure=now), None
            seconds = lim.base_lockout.total_seconds() * lim.lockout_growth ** min(state.lockouts, 64)
            period = min(timedelta(seconds=min(seconds, lim.max_lockout.total_seconds())), lim.max_lockout)
            return replace(state, failures=0, last_failure=now, locked_until=now + period,
                           lockouts=state.lockouts + 1), period

        return self.store.update(attempt_key(key), change, now)

    def record_success(self, key: Hashable, now: datetime) -> None:
        """A successful attempt: clears the failure count and the lockout growth."""
        known = self.store.get(attempt_key(key))
        if known is None or (known.failures == 0 and known.lockouts == 0 and known.locked_until is None
                             and known.last_failure is None):
            return  # nothing to clear: no write (a shared store is not written on every success)

        def change(old: AttemptState | None) -> tuple[AttemptState, None]:
            state = self._fresh(old, now)
            return replace(state, failures=0, lockouts=0, locked_until=None, last_failure=None), None

        self.store.update(attempt_key(key), change, now)

    def locked_until(self, key: Hashable) -> datetime | None:
        """End of the key's current or last lockout (None if never locked or unknown)."""
        state = self.store.get(attempt_key(key))
        return None if state is None else state.locked_until


class Attempt:
    """One authentication attempt checked against a client address and, once known, a credential key.

    The address key's bucket is consumed up front (flood control). Lockouts
    do not refuse the attempt outright: the credential is verified anyway,
    and only a failure is answered with :class:`LockedOut`. So a locked-out
    address (a NAT, a gateway) still lets a valid credential through while
    every guess from it keeps failing. Credential keys (a device id, a token
    id) consume no bucket before the credential verifies, so nobody can
    exhaust another device's attempts by sending forgeries in its name.
    """

    def __init__(self, addresses: AttemptLimiter, credentials: AttemptLimiter, address_key: Hashable,
                 now: datetime) -> None:
        self._addresses = addresses
        self._credentials = credentials
        self._address_key = address_key
        self._credential_key: Hashable | None = None
        self.now = now
        self.locked = addresses.admit(address_key, now)

    def credential(self, key: Hashable) -> None:
        """Name the credential the attempt presents (a device id, an API token id)."""
        self._credential_key = key
        if self._credentials.is_locked(key, self.now):
            self.locked = True

    def failed(self) -> None:
        """Record the failure on every key.

        Raises:
            LockedOut: the address or the credential is locked out.
        """
        self._addresses.record_failure(self._address_key, self.now)
        if self._credential_key is not None:
            self._credentials.record_failure(self._credential_key, self.now)
        if self.locked:
            retry = max(self._addresses.retry_after(self._address_key, self.now),
                        self._credentials.retry_after(self._credential_key, self.now)
                        if self._credential_key is not None else 0.0)
            raise LockedOut("locked out after repeated failures", retry_after=max(retry, 1.0))

    def succeeded(self) -> None:
        """The credential verified: its own failure count restarts (the address's does not)."""
        if self._credential_key is not None:
            self._credentials.record_success(self._credential_key, self.now)
