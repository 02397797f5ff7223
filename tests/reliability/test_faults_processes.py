"""Faults that need the real process to feel them: a full volume under a real ``iotguard agent``,
a link that silently drops packets between a real hub and Mosquitto (a black hole, not a cut),
clock jumps of the real hub and agent processes (libfaketime), and PostgreSQL failing over to
a streaming replica under a real hub.

Each prints ``RECOVERY <fault> <seconds>`` (and ``DETECTION`` where detecting the fault is the
question) for docs/reliability.md, and checks that nothing accepted is lost or stored twice.
"""

from __future__ import annotations

import re
import resource
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import AgentProcess, Deployment, deploy, run_fault, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.timeout(600)]

_SUMMARY = re.compile(r"samples (\d+), readings sent (\d+), refused at capture (\d+), unacknowledged (\d+)")


@pytest.fixture
def on_sqlite(tmp_path: Path) -> Iterator[Deployment]:
    yield from deploy(tmp_path, "sqlite")


@pytest.fixture
def behind_relay_short_keepalive(tmp_path: Path) -> Iterator[Deployment]:
    """PostgreSQL, the hub reaching Mosquitto through a relay, and a 5 s MQTT keep-alive."""
    yield from deploy(tmp_path, "postgresql", proxied=True, env={"IOTGUARD_HUB__BROKER_KEEPALIVE_S": "5"})


def _device_readings(dep: Deployment, device_id: str) -> Counter[tuple[str, int, int]]:
    return Counter({k: n for k, n in dep.stored().items() if k[0] == device_id})


def test_disk_full_on_an_agent_outbox_refuses_at_capture_and_loses_nothing_accepted(
        on_sqlite: Deployment, tmp_path: Path) -> None:
    """A real ``iotguard agent`` whose volume fills (``RLIMIT_FSIZE`` of the running process set to
    0 with ``prlimit``: every write to any file fails, EFBIG, as on a full volume; no privilege or
    mount needed) for 6 s, then has space again. While full, each reading is refused at capture
    with a reason (``outbox_unwritable``) and the agent keeps running; every reading it accepted
    (in its outbox) is stored once at the hub; it resumes by itself when space returns."""
    dep = on_sqlite
    code = dep.hub.provisioner(dep.hub.operator_token())("dev-full", "motion-1")
    agent = AgentProcess(dep.hub, tmp_path, "dev-full", interval=0.2, model="motion-1")  # 1 reading/s
    agent.start(code)
    try:
        try:
            wait_for(lambda: len(_device_readings(dep, "dev-full")) >= 4, 90, "the agent's first readings")
        except AssertionError:
            raise AssertionError("no readings; agent said:\n" + agent.output()[-3000:]) from None
        assert agent.proc is not None
        pid = agent.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
        full_at = time.monotonic()
        time.sleep(6.0)
        stored_while_full = len(_device_readings(dep, "dev-full"))
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        over = time.monotonic()
        recovery = wait_for(lambda: len(_device_readings(dep, "dev-full")) > stored_while_full, 60,
                            "readings after the space came back")
        refusals = [t for t, line in agent.lines if "reading refused at capture: outbox_unwritable" in line]
        assert len(refusals) >= 3, agent.output()[-3000:]
        assert all(full_at <= t <= over + 1.0 for t in refusals), "refused while the volume had space"
        assert agent.proc.poll() is None, "the agent died of the full volume:\n" + agent.output()[-3000:]
        time.sleep(3.0)
    finally:
        agent.stop()
    summary = _SUMMARY.search(agent.output())
    assert summary is not None, agent.output()[-3000:]
    samples, sent, refused, unacknowledged = (int(x) for x in summary.groups())
    assert refused == len(refusals) and samples > refused
    stored = _device_readings(dep, "dev-full")
    assert [k for k, n in stored.items() if n > 1] == [], "a reading was stored twice"
    # Every reading the agent accepted is stored (those still unacknowledged at its stop stay on its disk).
    assert len(stored) == sent, f"accepted {sent}, stored {len(stored)} ({unacknowledged} unacknowledged)"
    print(f"RECOVERY agent_outbox_full {recovery:.2f} (refused at capture {refused}, accepted and stored {sent})")


def test_black_hole_between_hub_and_broker_is_detected_by_keepalive_and_loses_nothing(
        behind_relay_short_keepalive: Deployment, tmp_path: Path) -> None:
    """The hub-broker link silently stops forwarding (no connection closed or refused; bytes held,
    new connections not answered) while the devices keep publishing. Only the MQTT keep-alive
    (5 s here, ``hub.broker_keepalive_s``) can notice: the hub must give up the dead connection
    and try a new one by itself. Then the link forwards again; nothing is lost or stored twice."""
    dep = behind_relay_short_keepalive
    proxy = dep.proxy
    assert proxy is not None
    detected: list[float] = []

    def fault() -> None:
        before = proxy.accepted
        proxy.black_hole()
        start = time.monotonic()
        detected.append(wait_for(lambda: proxy.accepted > before, 60, "the hub to notice the black hole"))
        time.sleep(max(0.0, 8.0 - (time.monotonic() - start)))
        proxy.restore()

    recovery = run_fault(dep, tmp_path, "black_hole", fault)
    keepalive = 5.0
    assert detected[0] <= 2 * keepalive + 5.0, f"detected after {detected[0]:.1f} s"
    print(f"DETECTION black_hole {detected[0]:.2f} (keep-alive {keepalive:.0f} s); RECOVERY {recovery:.2f}")


@pytest.fixture
def hub_with_settable_clock(tmp_path: Path) -> Iterator[Deployment]:
    """SQLite, and the hub's wall clock moved by the seconds in ``tmp_path / "hub-offset"``."""
    (tmp_path / "hub-offset").write_text("0")
    yield from deploy(tmp_path, "sqlite", env={"IOTGUARD_HUB__UNSAFE_CLOCK_OFFSET_FILE": str(tmp_path / "hub-offset")})


def test_clock_jumps_of_the_real_hub_and_agent_lose_nothing_and_collection_resumes(
        hub_with_settable_clock: Deployment, tmp_path: Path) -> None:
    """The real hub's and the real agent's wall clocks jump (``unsafe_clock_offset_file``, an
    ``OffsetFileClock``; libfaketime 0.9.10 breaks CPython 3.11's ``time.sleep`` with EINVAL, so
    the process's own clock source is moved instead): the hub back 2 hours, forward 2 days, back
    to now; then the agent forward 2 days, back 2 hours, back to now. Every reading the agent
    accepted is stored once, it keeps collecting after each jump (a release interval is measured
    on the monotonic clock), and no privacy receipt is stored twice."""
    dep = hub_with_settable_clock
    hub_offset, agent_offset = tmp_path / "hub-offset", tmp_path / "agent-offset"
    agent_offset.write_text("0")
    code = dep.hub.provisioner(dep.hub.operator_token())("dev-clock", "motion-1")
    agent = AgentProcess(dep.hub, tmp_path, "dev-clock", interval=0.2, model="motion-1",
                         env={"IOTGUARD_AGENT__UNSAFE_CLOCK_OFFSET_FILE": str(agent_offset)})
    agent.start(code)
    try:
        wait_for(lambda: len(_device_readings(dep, "dev-clock")) >= 3, 90, "the agent's first readings")
        recoveries: dict[str, float] = {}
        for who, path, offsets in (("hub", hub_offset, (-7200, 2 * 86400, 0)),
                                   ("agent", agent_offset, (2 * 86400, -7200, 0))):
            for offset in offsets:
                path.write_text(str(offset))
                before = len(_device_readings(dep, "dev-clock"))
                name = f"{who}{offset:+d}s"
                recoveries[name] = wait_for(lambda b=before: len(_device_readings(dep, "dev-clock")) > b,  # type: ignore[misc]
                                            60, f"readings stored after the {name} jump")
                time.sleep(2.0)
        assert agent.proc is not None and agent.proc.poll() is None, agent.output()[-3000:]
    finally:
        agent.stop()
    summary = _SUMMARY.search(agent.output())
    assert summary is not None, agent.output()[-3000:]
    _samples, sent, refused, unacknowledged = (int(x) for x in summary.groups())
    stored = _device_readings(dep, "dev-clock")
    assert [k for k, n in stored.items() if n > 1] == [], "a reading was stored twice"
    # A reading still unacknowledged when the agent stops is in flight, not lost: it must be stored too.
    assert refused == 0 and len(stored) == sent, \
        f"accepted {sent}, stored {len(stored)} ({unacknowledged} unacknowledged)"
    signatures = _receipt_signatures(dep, "dev-clock")
    assert signatures and len(signatures) == len(set(signatures)), "a receipt was stored twice"
    print("RECOVERY clock_jumps " + " ".join(f"{k}:{v:.2f}" for k, v in recoveries.items()))


def _receipt_signatures(dep: Deployment, device_id: str) -> list[bytes]:
    from sqlalchemy import create_engine, select

    from iotguard.hub.stores.receipts import receipts

    engine = create_engine(dep.database_url)
    try:
        with engine.connect() as c:
            return [bytes(s) for (s,) in c.execute(select(receipts.c.signature)
                                                   .where(receipts.c.device_id == device_id)).all()]
    finally:
        engine.dispose()


@pytest.fixture
def on_failover_pair(tmp_path: Path) -> Iterator[Deployment]:
    """A PostgreSQL primary and its synchronous streaming replica; the hub's URL names both."""
    yield from deploy(tmp_path, "failover")


def test_postgresql_failover_to_a_promoted_replica_loses_and_duplicates_nothing(
        on_failover_pair: Deployment, tmp_path: Path) -> None:
    """The primary dies (immediate stop) while the fleet sends; the replica is promoted. The hub's
    URL names both hosts with ``target_session_attrs=read-write`` (libpq multi-host), so the hub
    reconnects to the new primary by itself; the replication is synchronous, so every reading the
    hub acknowledged is on the new primary. Nothing lost or stored twice."""
    pair = on_failover_pair.pair
    assert pair is not None

    def fault() -> None:
        pair.primary.kill()
        time.sleep(1.0)
        pair.replica.promote()

    recovery = run_fault(on_failover_pair, tmp_path, "postgresql_failover", fault)
    assert pair.replica.sql("SELECT pg_is_in_recovery()") == "f"
    print(f"RECOVERY postgresql_failover {recovery:.2f}")
