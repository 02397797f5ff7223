"""Firmware updates against the real hub (uvicorn, TLS 1.3, SQLite): an agent enrolled over HTTPS fetches the
TUF repository as signed device requests, installs a good release and refuses whatever TUF refuses."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from iotguard.agent import Agent
from iotguard.config import AgentConfig, HubConfig
from iotguard.errors import UpdateRefused
from iotguard.hub.service import Hub
from iotguard.hub.stores.firmware import firmware_files
from iotguard.sim.updates import FleetUpdate

pytestmark = pytest.mark.slow
MODEL = "thermo-1"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(HubConfig(data_dir=str(tmp_path / "hub"), embedded_broker_bind=f"127.0.0.1:{_port()}",
                      api_bind=f"127.0.0.1:{_port()}"))
    h.start()
    yield h
    h.stop()


def _serve(hub: Hub, path: str, body: bytes) -> None:
    with hub.store.engine.begin() as conn:
        conn.execute(update(firmware_files).where(firmware_files.c.path == path).values(body=body))


def test_agent_over_https_refuses_what_tuf_refuses_from_the_real_hub(hub: Hub, tmp_path: Path) -> None:
    assert hub.api_url.startswith("https://")
    fleet = FleetUpdate.create(hub.services, [MODEL])
    agent = Agent(AgentConfig(data_dir=str(tmp_path / "dev-1"), hub_url=hub.api_url), "dev-1")
    try:
        agent.enroll(str(hub.lifecycle.add_device("dev-1", MODEL)))
        fleet.attach(agent, MODEL)
        _model, client, _check_in = fleet.clients["dev-1"]
        fleet.publish(MODEL, 2, size=256 * 1024)
        files = hub.services.firmware._files.load()
        (image_path,) = [p for p in files if p.startswith("targets/")]

        # Arbitrary software: the hub (or its database) serves other bytes under the signed path.
        _serve(hub, image_path, b"\x00" * len(files[image_path]))
        with pytest.raises(UpdateRefused, match="TUF refused"):
            client.install(2)
        assert client.slots.boot().image.version == 1

        _serve(hub, image_path, files[image_path])
        outcome = client.install(2)
        assert (outcome.version, outcome.rolled_back) == (2, False)

        # Endless data: a timestamp far beyond the client's limit is cut off while it streams.
        fleet.publish(MODEL, 3, size=1024)
        timestamp = hub.services.firmware.file("metadata/timestamp.json")
        assert timestamp is not None
        _serve(hub, "metadata/timestamp.json", b"{" + b" " * (8 * 1024 * 1024))
        with pytest.raises(UpdateRefused, match="TUF refused"):
            client.install(3)
        assert client.slots.boot().image.version == 2

        # Quarantine: the device plane and Cedar give a contained device no files at all.
        hub.services.posture.quarantine("dev-1", actor="test", reason="e2e")
        _serve(hub, "metadata/timestamp.json", timestamp)
        with pytest.raises(UpdateRefused):
            client.install(3)
    finally:
        agent.close()
