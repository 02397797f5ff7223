"""A connection on which the broker stops taking the device's publishes (ADR 1506): the agent notices
and reconnects, so what its MQTT client holds is sent again and nothing stays unacknowledged."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from iotguard.agent import Agent
from iotguard.agent.broker_watch import PublishWatch
from iotguard.config import AgentConfig
from iotguard.hub import mqtt_frames as mf
from iotguard.hub.service import Hub
from iotguard.wire import Reading


class _Info:
    def __init__(self, published: bool = False, error: type[Exception] | None = None) -> None:
        self.published, self.error = published, error

    def is_published(self) -> bool:
        if self.error is not None:
            raise self.error("not queued")
        return self.published


def test_a_publish_the_broker_took_is_not_waited_for() -> None:
    watch = PublishWatch(10.0)
    taken, held = _Info(), _Info()
    watch.record((1, 1), taken, 0.0)
    watch.record((1, 2), held, 0.0)
    taken.published = True
    assert not watch.waiting((1, 1)) and watch.waiting((1, 2))
    assert not watch.stalled(1.0)  # the broker took (1, 1): progress seen now
    assert not watch.stalled(11.0)  # not over the stall time since then
    assert watch.stalled(11.5) and watch.stalls == 1
    assert watch.waiting((1, 2))  # kept: the client sends it again itself on its new connection
    assert not watch.stalled(21.0)  # the drop restarted the wait
    assert watch.stalled(21.6) and watch.stalls == 2
    assert len(watch) == 0  # still the oldest at the next stall: the client lost it, the agent publishes it
    assert not watch.stalled(100.0)


def test_a_slow_broker_that_still_takes_publishes_is_not_a_stall() -> None:
    """An overloaded broker answers late but answers: dropping its connection would only add load."""
    watch = PublishWatch(10.0)
    infos = [_Info() for _ in range(40)]
    for i, info in enumerate(infos):
        watch.record((1, i), info, 0.0)
    for i in range(30):  # the broker takes one publish every 2 s, the oldest waiting 60 s in the end
        infos[i].published = True
        assert not watch.stalled(2.0 * (i + 1))
    assert watch.stalls == 0 and len(watch) == 10
    assert watch.stalled(60.0 + 10.5)  # then nothing more for over the stall time: wedged


def test_a_stall_keeps_what_waits_so_a_reconnect_adds_no_copies() -> None:
    """What the broker took after the reconnect is forgotten; a new oldest publish gets its own chance."""
    watch = PublishWatch(10.0)
    old, new = _Info(), _Info()
    watch.record((1, 1), old, 0.0)
    assert watch.stalled(10.5)
    old.published = True  # the client sent it again and the broker took it
    watch.record((1, 2), new, 11.0)
    assert not watch.stalled(21.0)
    assert watch.stalled(21.5) and watch.waiting((1, 2))  # a first stall for (1, 2): kept


def test_the_stall_time_restarts_at_each_connection() -> None:
    watch = PublishWatch(10.0)
    watch.record((1, 1), _Info(), 0.0)
    watch.connected(8.0)  # the client sent it again on the new connection
    assert not watch.stalled(15.0)
    assert watch.stalled(18.5)


def test_a_publish_the_client_refused_is_not_waited_for() -> None:
    watch = PublishWatch(1.0)
    watch.record((1, 1), _Info(error=RuntimeError), 0.0)
    watch.record((1, 2), _Info(error=ValueError), 0.0)
    assert not watch.waiting((1, 1)) and not watch.stalled(5.0)


@pytest.fixture
def hub(embedded_hub: Hub) -> Hub:
    return embedded_hub


@pytest.mark.slow
def test_a_connection_whose_pubacks_never_come_is_dropped_and_everything_arrives(hub: Hub, tmp_path: Path) -> None:
    """The broker front swallows the broker's PUBACKs on the device's first connection only: the MQTT
    client's in-flight window (200) fills and every later publish only queues in the client, while
    pings still pass, so keepalive never ends the connection. Without the watch the last readings
    are never sent and stay unacknowledged."""
    front = hub.embedded_broker.front  # type: ignore[union-attr]
    assert front is not None
    connections: list[int] = []

    async def first_connection_swallows_pubacks(conn: Any, reader: Any, client: Any) -> None:
        connections.append(1)
        swallow = len(connections) == 1
        while (frame := await front._read_frame(reader, 1 << 28)) is not None:
            first, body = frame
            if swallow and first >> 4 == mf.PUBACK:
                continue
            client.write(bytes((first,)) + mf.encode_remaining_length(len(body)) + body)
            await client.drain()

    front._broker_to_client = first_connection_swallows_pubacks  # type: ignore[method-assign]
    cfg = AgentConfig(data_dir=str(tmp_path / "agent"), hub_url=hub.api_url, broker_url=hub.broker_address.url,
                      suites=["chacha20-poly1305"], ack_timeout_s=0.5)
    agent = Agent(cfg, "dev-wedged")
    agent.enroll(str(hub.lifecycle.add_device("dev-wedged", "thermo-1")))
    agent.broker_watch.stall_s = 2.0
    agent.connect()
    try:
        for i in range(260):
            agent.submit(Reading(1_700_000_000_000 + i, {"temperature": 20.0}, "heating_control"))
        deadline = time.monotonic() + 30
        while agent.pending() and time.monotonic() < deadline:
            agent.resend_due()
            time.sleep(0.2)
        assert agent.pending() == 0, f"{agent.pending()} readings never acknowledged"
        assert agent.broker_watch.stalls >= 1 and len(connections) >= 2
        assert hub.store.reading_count("dev-wedged") == 260
    finally:
        agent.close()


def test_what_the_broker_took_is_forgotten_without_a_resend() -> None:
    """An agent that seldom resends still holds only what waits for the broker, not every publish."""
    watch = PublishWatch(10.0)
    infos = [_Info() for _ in range(1000)]
    for i, info in enumerate(infos):
        watch.record((1, i), info, 0.0)
        info.published = i != 500  # every publish but one is taken right away
    watch.record((1, 1000), _Info(published=True), 0.0)
    assert len(watch) <= 501  # pruned up to the one the broker has not taken
    infos[500].published = True
    watch.record((1, 1001), _Info(published=True), 0.0)
    assert len(watch) == 0
