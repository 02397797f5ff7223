"""In-process hub pieces for unit and integration tests of the spine."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from iotguard.agent import Agent
from iotguard.clock import SystemClock
from iotguard.config import AgentConfig, HubConfig
from iotguard.hub.api import create_app
from iotguard.hub.compose import HubServices, build_hub_services
from iotguard.hub.ingest import IngestProcessor
from iotguard.hub.outbox import OutboxDrainer
from iotguard.hub.services import DeviceLifecycle
from iotguard.hub.store import HubStore


@dataclass
class HubParts:
    cfg: HubConfig
    store: HubStore
    registry: DeviceLifecycle
    processor: IngestProcessor
    client: TestClient
    tmp: Path
    services: HubServices
    drainer: OutboxDrainer
    app: FastAPI

    def deliver(self) -> int:
        """Deliver pending outbox rows, as the hub's API and maintenance tick do."""
        return self.drainer.drain()

    def agent(self, device_id: str, model: str = "thermo-1", suites: list[str] | None = None,
              enroll: bool = True) -> Agent:
        cfg = AgentConfig(data_dir=str(self.tmp / "agents" / device_id), hub_url="http://testserver",
                          suites=suites or ["chacha20-poly1305"])
        agent = Agent(cfg, device_id, http=self.client)
        if enroll:
            agent.enroll(str(self.registry.add_device(device_id, model)))
        return agent

    def operator_token(self, role: str = "operator") -> dict[str, str]:
        secret = self.store.create_api_token(f"test-{role}", role, now=SystemClock().now())
        return {"Authorization": f"Bearer {secret}"}


def make_hub(tmp_path: Path, url: str | None = None, **overrides: object) -> HubParts:
    cfg = HubConfig(data_dir=str(tmp_path / "hub"), **overrides)  # type: ignore[arg-type]
    services = build_hub_services(cfg, database_url=url)
    drainer = services.drainer("test-hub")
    app = create_app(services, drain=drainer.drain)
    return HubParts(cfg, services.store, services.lifecycle, services.processor, TestClient(app), tmp_path,
                    services, drainer, app)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubParts]:
    parts = make_hub(tmp_path)
    yield parts
    parts.store.engine.dispose()
