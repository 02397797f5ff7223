"""Per-device and per-segment quotas: token buckets deciding what a hub admits under load.

A flood from one device, or from one segment, must not starve the others:
ingest (and the embedded broker's front) admits a message only if its
device's bucket and then its segment's bucket hold a token. A device over
its quota is refused *before* its segment is charged, so one flooding device
spends at most its own quota of its segment's budget and its neighbours keep
theirs.

Each hub process owns its buckets (ADR 1500): charging a bucket shared in
the database would cost a round trip per message, which is exactly the load
being defended against. With N hub processes on one shared subscription the
broker spreads a device's messages over the N processes, so each process is
given ``1/N`` of the quota (:attr:`QuotaLimits.share`). Time is a parameter
(monotonic seconds); the module does no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from iotguard.errors import ConfigError

__all__ = ["DEVICE_OVER_QUOTA", "SEGMENT_OVER_QUOTA", "Admission", "QuotaLimits", "QuotaTable", "TokenBucket"]

#: Reason code of a message refused because its device is over its quota.
DEVICE_OVER_QUOTA = "device_over_quota"
#: Reason code of a message refused because its segment is over its quota.
SEGMENT_OVER_QUOTA = "segment_over_quota"


@dataclass(frozen=True)
class QuotaLimits:
    """One kind of quota (per device or per segment), fleet-wide.

    Attributes:
        rate_per_s: Sustained messages per second; 0 turns the quota off.
        burst: Messages admitted back to back after a quiet period.
        share: Hub processes splitting the load; each owns ``1/share`` of rate and burst.
        max_keys: Most buckets held (least recently used forgotten first; a forgotten
            bucket comes back full, which can only admit more, never less).
    """

    rate_per_s: float
    burst: float
    share: int = 1
    max_keys: int = 1_000_000

    def check(self) -> None:
        """Raises:
        ConfigError: a bound out of range.
        """
        if not (0 <= self.rate_per_s <= 10_000_000 and 1 <= self.burst <= 100_000_000):
            raise ConfigError("quota rate_per_s must be 0..10000000 and burst 1..100000000")
        if not (1 <= self.share <= 1024 and 1 <= self.max_keys <= 100_000_000):
            raise ConfigError("quota share must be 1..1024 and max_keys 1..100000000")

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    @property
    def local_rate(self) -> float:
        """This process's slice of the rate."""
        return self.rate_per_s / self.share

    @property
    def local_burst(self) -> float:
        """This process's slice of the burst (at least one message)."""
        return max(1.0, self.burst / self.share)


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``capacity``, starting full."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (refills; time going backwards refills nothing)."""
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        return self.tokens

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if there are; whether they were taken."""
        if self.level(now) >= n:
            self.tokens -= n
            return True
        return False


class QuotaTable:
    """Token buckets by key, bounded in number (least recently used forgotten first)."""

    def __init__(self, limits: QuotaLimits) -> None:
        limits.check()
        self.limits = limits
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: Hashable, now: float) -> TokenBucket:
        """The bucket of ``key`` (a full new one if unknown)."""
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = TokenBucket(self.limits.local_rate, self.limits.local_burst, now)
            if len(self._buckets) > self.limits.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return b


class Admission:
    """Decides, message by message, whether a device's message is admitted.

    Args:
        device: Quota of each device.
        segment: Quota of each segment (all its devices together).
    """

    def __init__(self, device: QuotaLimits, segment: QuotaLimits) -> None:
        self.devices = QuotaTable(device)
        self.segments = QuotaTable(segment)

    def admit(self, device_id: str, segment: str, now: float) -> str | None:
        """Charge one message; ``None`` if admitted, else the reason code it is refused with.

        A device over its quota is refused without charging its segment.
        """
        dev = self.devices.bucket(device_id, now) if self.devices.limits.enabled else None
        if dev is not None and dev.level(now) < 1.0:
            return DEVICE_OVER_QUOTA
        if self.segments.limits.enabled and not self.segments.bucket(segment, now).take(now):
            return SEGMENT_OVER_QUOTA
        if dev is not None:
            dev.take(now)
        return None
