"""Quotas: token buckets per device and per segment (time is a parameter, no sleeping)."""

from __future__ import annotations

import pytest

from iotguard.admission import DEVICE_OVER_QUOTA, SEGMENT_OVER_QUOTA, Admission, QuotaLimits, QuotaTable, TokenBucket
from iotguard.errors import ConfigError


def test_bucket_admits_burst_then_refills_at_rate() -> None:
    b = TokenBucket(rate=10.0, capacity=5.0, now=0.0)
    assert [b.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert b.take(0.1) and not b.take(0.1)  # 0.1 s at 10/s is one token
    assert b.level(100.0) == 5.0  # never above capacity


def test_clock_going_backwards_refills_nothing() -> None:
    b = TokenBucket(rate=10.0, capacity=1.0, now=50.0)
    assert b.take(50.0)
    assert not b.take(10.0)


def test_flooding_device_cannot_starve_its_segment_neighbours() -> None:
    """Check for a flood from one device: over its quota it stops charging the segment."""
    adm = Admission(QuotaLimits(rate_per_s=10, burst=10), QuotaLimits(rate_per_s=100, burst=50))
    refused = [adm.admit("flooder", "plant", 0.0) for _ in range(1000)]  # 100x its burst at one instant
    assert refused.count(None) == 10 and refused.count(DEVICE_OVER_QUOTA) == 990
    # The segment was charged only for the 10 admitted: 40 tokens remain for the others.
    assert [adm.admit(f"dev-{i}", "plant", 0.0) for i in range(40)] == [None] * 40
    assert adm.admit("dev-41", "plant", 0.0) == SEGMENT_OVER_QUOTA


def test_segment_flood_does_not_touch_other_segments() -> None:
    adm = Admission(QuotaLimits(rate_per_s=0, burst=1), QuotaLimits(rate_per_s=1, burst=3))
    assert [adm.admit(f"d{i}", "a", 0.0) for i in range(4)] == [None, None, None, SEGMENT_OVER_QUOTA]
    assert adm.admit("e1", "b", 0.0) is None


def test_each_process_owns_its_share_of_the_quota() -> None:
    limits = QuotaLimits(rate_per_s=300, burst=30, share=3)
    assert limits.local_rate == 100 and limits.local_burst == 10
    adm = Admission(limits, QuotaLimits(0, 1))
    assert [adm.admit("d", "s", 0.0) for _ in range(11)].count(None) == 10


def test_quota_table_is_bounded() -> None:
    t = QuotaTable(QuotaLimits(rate_per_s=1, burst=1, max_keys=3))
    for i in range(10):
        t.bucket(i, 0.0)
    assert len(t) == 3


@pytest.mark.parametrize("limits", [QuotaLimits(-1, 1), QuotaLimits(1, 0), QuotaLimits(1, 1, share=0)])
def test_out_of_range_limits_are_refused(limits: QuotaLimits) -> None:
    with pytest.raises(ConfigError):
        limits.check()
