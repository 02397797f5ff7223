"""The production Mosquitto configuration lets a hub process hold a whole batch unacknowledged
(ADR 1505): the hub acknowledges after its commit, so the broker's in-flight limit is its batch size."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotguard.config import HubConfig
from iotguard.errors import ConfigError
from iotguard.hub.mosquitto import BrokerFiles, BrokerLimits, render_mosquitto_conf


def test_broker_in_flight_limit_allows_the_hubs_batch_and_bounds_its_bytes(tmp_path: Path) -> None:
    limits = BrokerLimits()
    assert limits.max_inflight_messages >= HubConfig().batch_max_messages  # was 20: batches of 20
    conf = render_mosquitto_conf(BrokerFiles(tmp_path), port=8883).splitlines()
    assert f"max_inflight_messages {limits.max_inflight_messages}" in conf
    # The byte bound: what one client holds unacknowledged, whatever the message count.
    assert f"max_inflight_bytes {8 * 1024 * 1024}" in conf
    assert limits.max_inflight_bytes >= 32 * 262_144  # 32 of the largest media envelopes
    with pytest.raises(ConfigError):
        BrokerLimits(max_inflight_bytes=-1).check()
