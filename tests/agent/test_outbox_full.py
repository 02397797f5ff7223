"""The agent's outbox when its volume cannot be written: new readings are refused with a reason,
nothing already kept is dropped (the real-process fault is tests/reliability/test_faults_processes.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from iotguard.agent.outbox import Outbox
from iotguard.errors import StorageError


def _unwritable(box: Outbox) -> None:
    box._db.execute("PRAGMA query_only=ON")  # every write now fails inside SQLite, as on a full volume


def test_outbox_refuses_a_new_envelope_by_reason_when_it_cannot_write(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.add(1, 1, b"kept")
    box.add_receipt(b"receipt")
    _unwritable(box)
    with pytest.raises(StorageError) as exc:
        box.add(1, 2, b"new")
    assert exc.value.code == "outbox_unwritable"
    with pytest.raises(StorageError):
        box.add_receipt(b"another")
    # Bookkeeping that cannot be written is skipped: what is kept stays and is sent again.
    box.mark_sent([(1, 1)], 5.0)
    assert box.remove(1, [1]) == 0
    box.remove_receipt(box.receipts()[0][0])
    assert box.due(10.0) == [(1, 1, b"kept")] and len(box.receipts()) == 1
    box._db.execute("PRAGMA query_only=OFF")  # space again
    box.add(1, 2, b"new")
    assert box.remove(1, [1, 2]) == 2 and len(box) == 0
    box.close()


class _SteppingClock:
    def __init__(self) -> None:
        from datetime import UTC, datetime, timedelta

        self.base, self.step = datetime.now(tz=UTC), timedelta(0)

    def now(self) -> datetime:
        return self.base + self.step

    def monotonic(self) -> float:
        return self.step.total_seconds()


def test_a_reading_refused_at_capture_is_not_counted_in_the_next_privacy_receipt(tmp_path: Path) -> None:
    """Disk full at capture: the pipeline released a reading but the outbox refused it; the hub
    never gets it, so the next receipt must not count it (it used to: the pipeline counted it first)."""
    from datetime import timedelta

    from fastapi.testclient import TestClient

    from iotguard.agent import Agent
    from iotguard.config import AgentConfig, HubConfig
    from iotguard.hub.api import create_app
    from iotguard.hub.compose import build_hub_services
    from iotguard.privacy import ConsentState
    from iotguard.privacy.receipt import decode_receipt

    services = build_hub_services(HubConfig(data_dir=str(tmp_path / "hub")))
    client = TestClient(create_app(services, drain=services.drainer("t").drain))
    agent = Agent(AgentConfig(data_dir=str(tmp_path / "agent"), hub_url="http://testserver",
                              suites=["chacha20-poly1305"]), "dfull-1", http=client)
    agent.enroll(str(services.lifecycle.add_device("dfull-1", "thermo-1")))
    clock = _SteppingClock()
    agent.attach_privacy("thermo-1", ConsentState("subject-full").grant("heating_control", clock.now()), clock)
    privacy = agent.privacy
    assert privacy is not None
    t0 = 1_800_000_000_000
    kept = agent.collect({"temperature": 20.5, "humidity": 40.0}, t0)
    assert len(kept) == 1
    _unwritable(agent.outbox)
    clock.step += timedelta(minutes=10)  # past the contract's frequency limit: the pipeline releases each sample
    with pytest.raises(StorageError) as exc:
        agent.collect({"temperature": 21.0, "humidity": 41.0}, t0 + 600_000)
    assert exc.value.code == "outbox_unwritable"
    agent.outbox._db.execute("PRAGMA query_only=OFF")  # space again
    clock.step += timedelta(minutes=10)
    kept += agent.collect({"temperature": 21.5, "humidity": 42.0}, t0 + 1_200_000)
    assert len(kept) == 2 and len(agent.outbox) == 2
    receipt = privacy.seal_receipt(clock.now())
    assert receipt is not None
    claims = decode_receipt(receipt).claims
    assert claims["count"] == 2 and claims["last_ts"] == t0 + 1_200_000
