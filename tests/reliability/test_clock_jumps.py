"""Clock jumps on the hub: its wall clock jumps back 2 hours and forward 2 days while a device
sends. Nothing accepted is lost or stored twice, the replay window still holds, and the quotas
(monotonic time) are not refilled by a jump. In process: the hub's clock is injected (a real
process's clock cannot be moved without faking the system time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from iotguard.admission import Admission, QuotaLimits
from iotguard.config import AgentConfig, HubConfig
from iotguard.hub.api import create_app
from iotguard.hub.compose import build_hub_services
from iotguard.hub.ingest import Incoming
from iotguard.wire import Reading, decode_envelope, encode_reading


class _JumpingClock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(tz=UTC) + self.offset

    def monotonic(self) -> float:
        import time

        return time.monotonic()


def test_hub_clock_jumps_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    from iotguard.agent import Agent

    clock = _JumpingClock()
    services = build_hub_services(HubConfig(data_dir=str(tmp_path / "hub")), clock=clock)
    client = TestClient(create_app(services, drain=services.drainer("t").drain))
    agent = Agent(AgentConfig(data_dir=str(tmp_path / "agent"), hub_url="http://testserver",
                              suites=["chacha20-poly1305"]), "jump-1", http=client)
    agent.enroll(str(services.lifecycle.add_device("jump-1", "thermo-1")))
    sent: list[Incoming] = []
    acked: set[int] = set()
    for offset in (timedelta(0), timedelta(hours=-2), timedelta(days=2), timedelta(0)):
        clock.offset = offset
        for i in range(5):
            _seq, env = agent.sealer.seal(encode_reading(Reading(1_700_000_000_000 + i, {"temperature": 20.0},
                                                                  "heating_control")))
            sent.append(Incoming(agent.sealer.topic, env))
        out = services.processor.process(sent[-5:])
        acked |= {decode_envelope(m.payload).seq for m in sent[-5:]} if out.stored == 5 else set()
    # The device resends everything it holds (all of it, acknowledged or not) once the clock is back.
    clock.offset = timedelta(0)
    resent = services.processor.process(sent)
    assert services.store.reading_count("jump-1") == 20  # every reading, once
    assert resent.rejected.get("replay", 0) >= len(acked)  # what was stored before is a replay now


def test_a_clock_jump_refills_no_quota() -> None:
    adm = Admission(QuotaLimits(rate_per_s=1, burst=2), QuotaLimits(0, 1))
    assert [adm.admit("d", "s", 1000.0) for _ in range(3)] == [None, None, "device_over_quota"]
    assert adm.admit("d", "s", 10.0) == "device_over_quota"  # time went back: nothing refilled
    assert adm.admit("d", "s", 1001.0) is None  # one real second later: one token


def test_device_clock_jumps_lose_no_reading_and_no_receipt(tmp_path: Path) -> None:
    """The device's clock jumps forward 2 days and back 2 hours while it collects and sends.
    Its readings (device timestamps) are all stored once; its signed receipt uploads are refused
    as ``stale`` while its clock is off, kept in its outbox (not dropped), and stored once each
    when the clock is right again (agent/receipts.py, ADR 1502)."""
    from iotguard.agent import Agent
    from iotguard.privacy import ConsentState
    from iotguard.sim import make_sensor

    services = build_hub_services(HubConfig(data_dir=str(tmp_path / "hub")))
    client = TestClient(create_app(services, drain=services.drainer("t").drain))
    device_clock = _JumpingClock()
    agent = Agent(AgentConfig(data_dir=str(tmp_path / "agent"), hub_url="http://testserver",
                              suites=["chacha20-poly1305"]), "djump-1", http=client, clock=device_clock)
    agent.enroll(str(services.lifecycle.add_device("djump-1", "thermo-1")))
    consent = ConsentState("subject-djump").grant("heating_control", device_clock.now())
    agent.attach_privacy("thermo-1", consent, device_clock)
    sensor = make_sensor("thermo-1", 7)
    signed = 0
    for offset in (timedelta(days=2), timedelta(hours=-2), timedelta(0)):
        device_clock.offset = offset
        for _ in range(3):
            t = device_clock.now().timestamp()
            agent.collect(sensor.sample(t), int(t * 1000))
        signed += agent.send_receipt(force=True)
        if offset:
            assert agent.receipts.pending >= 1 and not agent.receipts.dropped  # stale: kept, not dropped
    assert agent.receipts.kept >= 2  # refused (stale) at +2 days and again at -2 hours
    assert agent.receipts.pending == 0 and agent.receipts.delivered == signed >= 1
    assert len(services.consent.privacy.receipts_of("djump-1")) == signed  # each once
    held = agent.outbox.due(older_than=float("inf"))
    out = services.processor.process([Incoming(agent.sealer.topic, env) for _e, _s, env in held])
    assert out.stored == len(held) >= 1 and services.store.reading_count("djump-1") == len(held)
