"""Crash safety end to end with real processes: ``iotguard hub`` (embedded broker or Mosquitto; SQLite or
PostgreSQL) is killed with SIGKILL while a simulated fleet of real agents sends. (Apart from
test_e2e_fleet.py, whose deployments and helpers it shares, so the two files run in parallel.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.e2e.harness import HubProcess
from tests.e2e.test_e2e_fleet import _drain, _fleet, _stored_keys

pytestmark = pytest.mark.slow


def test_kill_9_hub_mid_run_loses_and_duplicates_nothing(hub_process: HubProcess, tmp_path: Path) -> None:
    """Crash safety: kill -9 the hub while devices send; restart; every reading is stored exactly once."""
    fleet = _fleet(hub_process, tmp_path, 5)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            fleet.send_round()
            time.sleep(0.03)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        time.sleep(2.0)
        hub_process.kill()
        time.sleep(1.5)  # devices keep producing into their outboxes meanwhile
        hub_process.start()
        time.sleep(2.0)
    finally:
        stop.set()
        sender.join()
    try:
        _drain(fleet, timeout=180, hub=hub_process)  # a hub on a loaded CI machine works off its backlog slowly
        time.sleep(0.5)
        stored = _stored_keys(hub_process)
        assert len(stored) == len(set(stored)), "a reading was stored twice"
        assert sorted(stored) == sorted(fleet.submitted), (
            f"lost {len(set(fleet.submitted) - set(stored))}, extra {len(set(stored) - set(fleet.submitted))}")
        assert fleet.sent > 100
    finally:
        fleet.close()
