"""The attempt limiter: rate, lockout, growth, bound, reset."""

from __future__ import annotations

from datetime import timedelta

import pytest

from iotguard.errors import AuthenticationError, ConfigError
from iotguard.hub.ratelimit import AttemptLimiter, AttemptLimits, LockedOut
from tests.lifecycle.conftest import NOW


def _fail(limiter: AttemptLimiter, key: str, n: int, now=NOW) -> timedelta | None:
    period = None
    for _ in range(n):
        limiter.check(key, now)
        period = limiter.record_failure(key, now)
    return period


def test_default_credential_guessing_locks_out() -> None:
    """Check for default-credential guessing: every guess fails and the key locks out."""
    limiter = AttemptLimiter(AttemptLimits(max_failures=5, burst=100))
    guesses = ["admin", "password", "123456", "iotguard", "default", "root"]
    outcomes = []
    for _guess in guesses:
        try:
            limiter.check("203.0.113.7", NOW)
        except LockedOut as exc:
            outcomes.append(("locked", exc.retry_after))
            continue
        limiter.record_failure("203.0.113.7", NOW)  # the guess never matches a real credential
        outcomes.append(("failed", 0))
    assert [o[0] for o in outcomes] == ["failed"] * 5 + ["locked"]
    assert outcomes[-1][1] == 60.0


def test_locked_out_is_an_authentication_error_with_its_own_code() -> None:
    exc = LockedOut("x", retry_after=1.0)
    assert isinstance(exc, AuthenticationError)
    assert exc.code == "locked_out"


def test_lockout_ends_after_its_period() -> None:
    limiter = AttemptLimiter(AttemptLimits(max_failures=3))
    assert _fail(limiter, "k", 3) == timedelta(minutes=1)
    with pytest.raises(LockedOut):
        limiter.check("k", NOW + timedelta(seconds=59))
    limiter.check("k", NOW + timedelta(seconds=60))


def test_lockout_grows_and_is_bounded() -> None:
    limits = AttemptLimits(max_failures=2, base_lockout=timedelta(minutes=1), max_lockout=timedelta(minutes=10),
                           burst=1000)
    limiter = AttemptLimiter(limits)
    now = NOW
    periods = []
    for _ in range(7):
        period = _fail(limiter, "k", 2, now)
        assert period is not None
        periods.append(period.total_seconds())
        now = now + period
    assert periods == [60, 120, 240, 480, 600, 600, 600]


def test_success_resets_failures_and_growth() -> None:
    limiter = AttemptLimiter(AttemptLimits(max_failures=3, burst=1000))
    period = _fail(limiter, "k", 3)
    assert period is not None
    later = NOW + period
    _fail(limiter, "k", 2, later)
    limiter.check("k", later)
    limiter.record_success("k", later)
    # After a success, three more failures start again at the base period.
    assert _fail(limiter, "k", 2, later) is None
    assert _fail(limiter, "k", 1, later) == timedelta(minutes=1)


def test_token_bucket_limits_rate_without_failures() -> None:
    limiter = AttemptLimiter(AttemptLimits(rate_per_s=1.0, burst=3))
    for _ in range(3):
        limiter.check("k", NOW)
    with pytest.raises(LockedOut) as info:
        limiter.check("k", NOW)
    assert info.value.retry_after == pytest.approx(1.0)
    limiter.check("k", NOW + timedelta(seconds=1))


def test_keys_are_independent() -> None:
    limiter = AttemptLimiter(AttemptLimits(max_failures=1))
    _fail(limiter, "attacker", 1)
    with pytest.raises(LockedOut):
        limiter.check("attacker", NOW)
    limiter.check("legit", NOW)


def test_memory_is_bounded_and_locked_keys_survive_a_key_flood() -> None:
    limiter = AttemptLimiter(AttemptLimits(max_keys=50, max_failures=1))
    _fail(limiter, "victim", 1)
    for i in range(1000):
        limiter.check(f"flood-{i}", NOW)
    assert len(limiter) == 50
    with pytest.raises(LockedOut):
        limiter.check("victim", NOW)


def test_old_failures_are_forgotten() -> None:
    limits = AttemptLimits(max_failures=3, forget_after=timedelta(days=1))
    limiter = AttemptLimiter(limits)
    _fail(limiter, "k", 2)
    assert _fail(limiter, "k", 1, NOW + timedelta(days=2)) is None


@pytest.mark.parametrize("bad", [
    AttemptLimits(rate_per_s=0), AttemptLimits(burst=0), AttemptLimits(max_failures=0),
    AttemptLimits(base_lockout=timedelta(hours=2), max_lockout=timedelta(hours=1)),
    AttemptLimits(lockout_growth=0.5), AttemptLimits(max_keys=0),
])
def test_unbounded_or_nonsense_limits_are_refused(bad: AttemptLimits) -> None:
    with pytest.raises(ConfigError):
        AttemptLimiter(bad)
