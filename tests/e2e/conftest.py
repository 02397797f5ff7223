"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import HubProcess

DEPLOYMENTS = [
    "embedded+sqlite",
    pytest.param("mosquitto+sqlite", marks=pytest.mark.mosquitto),
    pytest.param("embedded+postgres", marks=pytest.mark.postgres),
    pytest.param("mosquitto+postgres", marks=[pytest.mark.mosquitto, pytest.mark.postgres]),
]


@pytest.fixture(params=DEPLOYMENTS)
def hub_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubProcess]:
    """A running ``iotguard hub`` process on each deployment: embedded broker or Mosquitto, SQLite or PostgreSQL."""
    broker, db = request.param.split("+")
    db_url = request.getfixturevalue("postgres_url") if db == "postgres" else ""
    hub = HubProcess(tmp_path, database_url=db_url)
    if broker == "mosquitto":
        hub.use_mosquitto(request.getfixturevalue("mosquitto_tls"))
    hub.start()
    yield hub
    hub.stop()
