"""The broker front's per-certificate publish quota: back-pressure, not loss."""

from __future__ import annotations

import asyncio

from iotguard.admission import QuotaLimits
from iotguard.hub.broker_front import BrokerFront
from iotguard.hub.tls import HUB_MQTT_IDENTITY


def _front(quota: QuotaLimits | None) -> BrokerFront:
    return BrokerFront("127.0.0.1", 0, ("127.0.0.1", 0), "s", access=None, publish_quota=quota)  # type: ignore[arg-type]


def test_flooding_device_is_slowed_down_and_its_neighbour_is_not() -> None:
    """Check for a publish flood at the broker: the flooder waits for tokens; others do not."""
    front = _front(QuotaLimits(rate_per_s=200, burst=5))

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(25):  # 5x its burst: 20 publishes past it
            await front._charge("flooder")
        elapsed = loop.time() - start
        flooded = front.throttled
        for _ in range(5):
            await front._charge("neighbour")
        assert front.throttled == flooded  # the neighbour's bucket is its own
        return elapsed

    elapsed = asyncio.run(run())
    # Every publish went through (none dropped), but no faster than the quota allows: 20 past
    # the burst at 200/s take at least 0.1 s however loaded the machine is (a lower bound only).
    assert front.throttled >= 1 and elapsed >= 20 / 200 * 0.95


def test_the_hub_identity_and_a_disabled_quota_are_never_throttled() -> None:
    async def run(front: BrokerFront, who: str) -> int:
        for _ in range(50):
            await front._charge(who)
        return front.throttled

    assert asyncio.run(run(_front(QuotaLimits(rate_per_s=1000, burst=1)), HUB_MQTT_IDENTITY)) == 0
    assert asyncio.run(run(_front(QuotaLimits(rate_per_s=0, burst=1)), "dev")) == 0
    assert asyncio.run(run(_front(None), "dev")) == 0
