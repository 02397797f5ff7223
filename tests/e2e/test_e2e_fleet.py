"""End to end with real processes: ``iotguard hub`` (embedded broker or Mosquitto;
SQLite or PostgreSQL) and a simulated fleet of real agents."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from iotguard.hub.schema import readings
from iotguard.hub.store import HubStore
from iotguard.sim import ATTACKS, Fleet
from tests.e2e.harness import HubProcess, wait_acknowledged

pytestmark = pytest.mark.slow

def _fleet(hub: HubProcess, tmp: Path, n: int) -> Fleet:
    fleet = Fleet(hub.provisioner(hub.operator_token()), hub_url=hub.api_url, broker_url=hub.broker_url,
                  data_dir=tmp / "fleet", ack_timeout_s=3.0)
    fleet.add_devices(n)
    return fleet


def _drain(fleet: Fleet, timeout: float = 60.0, hub: HubProcess | None = None) -> None:
    wait_acknowledged(fleet, "fleet", timeout, [hub] if hub is not None else [])


def _stored_keys(hub: HubProcess) -> list[tuple[str, int, int]]:
    url = hub.env["IOTGUARD_HUB__DATABASE_URL"] or f"sqlite:///{hub.tmp / 'hub' / 'hub.db'}"
    store = HubStore.open(url)
    with store.engine.connect() as c:
        rows = [tuple(r) for r in c.execute(select(readings.c.device_id, readings.c.epoch, readings.c.seq))]
    store.engine.dispose()
    return rows  # type: ignore[return-value]


def test_fleet_readings_stored_exactly_once_and_attacks_rejected(hub_process: HubProcess, tmp_path: Path) -> None:
    fleet = _fleet(hub_process, tmp_path, 6)
    try:
        rng = random.Random(7)
        for i in range(12):
            fleet.send_round()
            if i == 4:
                for attack in ATTACKS:
                    fleet.inject(attack, rng)
            time.sleep(0.05)
        _drain(fleet, hub=hub_process)
        time.sleep(0.5)
        stored = _stored_keys(hub_process)
        assert sorted(stored) == sorted(fleet.submitted)  # every reading, exactly once
        token = hub_process.operator_token()
        stats = httpx.get(f"{hub_process.api_url}/v1/stats", headers={"Authorization": f"Bearer {token}"},
                          verify=hub_process.verify()).json()
        totals = stats["rejected_total"]
        for code, n in fleet.attacks.items():
            assert totals.get(code, 0) >= n, (code, totals)
        assert hub_process.proc is not None and hub_process.proc.poll() is None  # survived the attacks
    finally:
        fleet.close()
