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
