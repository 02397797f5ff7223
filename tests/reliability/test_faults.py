"""Fault injection with real processes: an ``iotguard hub`` on Mosquitto (mTLS) and PostgreSQL
(or SQLite), a simulated fleet of real agents, and one fault while it sends. (The faults of the
volume and of the hub-broker link are in test_faults_link.py, so the two files run in parallel.)

Each fault is checked against the same guarantee, from sets of reading ids
(device, epoch, seq): nothing the fleet sent is lost, nothing is stored twice,
nothing is stored that no device sent, and the hub recovers by itself (the test
only sends, resends what the agents' outboxes hold past their ack timeout, and
waits). The recovery time (fault over -> the hub stores new readings again) is
printed as ``RECOVERY <fault> <seconds>`` for docs/reliability.md. The real
processes are in ``tests/reliability/harness.py``.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotguard.sim import Fleet
from tests.reliability.harness import START_S, Deployment, deploy, run_fault

#: Each test starts PostgreSQL, Mosquitto and a hub (up to three times) on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.timeout(900)]


@pytest.fixture
def on_postgres(tmp_path: Path) -> Iterator[Deployment]:
    yield from deploy(tmp_path, "postgresql")


def test_broker_restart_loses_and_duplicates_nothing(on_postgres: Deployment, tmp_path: Path) -> None:
    run_fault(on_postgres, tmp_path, "broker_restart", on_postgres.restart_broker)


def test_postgresql_stop_and_start_loses_and_duplicates_nothing(on_postgres: Deployment, tmp_path: Path) -> None:
    pg = on_postgres.pg
    assert pg is not None

    def fault() -> None:
        pg.stop()
        time.sleep(3.0)
        pg.start()

    def receipts_kept_and_stored_once(fleet: Fleet) -> None:
        # Privacy receipts the hub refused while its database was down are kept and retried
        # (agent/receipts.py): every receipt a device signed is stored, once.
        deadline = time.monotonic() + 60
        while any(d.agent.receipts.pending for d in fleet.devices) and time.monotonic() < deadline:
            fleet.flush_receipts()
            time.sleep(0.5)
        assert all(d.agent.receipts.pending == 0 for d in fleet.devices), "receipts still waiting"
        assert sum(d.agent.receipts.kept for d in fleet.devices) > 0, "no receipt met the database outage"
        assert not any(d.agent.receipts.dropped for d in fleet.devices)
        signed = Counter({d.agent.device_id: d.agent.receipts.delivered for d in fleet.devices})
        assert sum(signed.values()) == fleet.receipts_sent
        assert on_postgres.receipts() == +signed, "a receipt was lost or stored twice"
        print(f"RECEIPTS postgresql_restart signed {fleet.receipts_sent} "
              f"kept-for-retry {sum(d.agent.receipts.kept for d in fleet.devices)}")

    run_fault(on_postgres, tmp_path, "postgresql_restart", fault, check_fleet=receipts_kept_and_stored_once)


def test_sigkill_of_the_hub_at_random_moments_loses_and_duplicates_nothing(on_postgres: Deployment,
                                                                          tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))

    def fault() -> None:
        for _ in range(3):
            time.sleep(rng.uniform(0.1, 1.5))
            on_postgres.hub.kill()
            on_postgres.hub.start(timeout=START_S)

    run_fault(on_postgres, tmp_path, "sigkill_random", fault)


def test_stalled_hub_slow_consumer_loses_and_duplicates_nothing(on_postgres: Deployment, tmp_path: Path) -> None:
    """The consumer stops consuming (SIGSTOP) for 5 s while devices keep publishing, then resumes."""
    proc = on_postgres.hub.proc
    assert proc is not None

    def fault() -> None:
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(5.0)
        os.kill(proc.pid, signal.SIGCONT)

    run_fault(on_postgres, tmp_path, "slow_consumer", fault)
