"""Fault injection with real processes, continued from test_faults.py: disk full on the hub's database
volume, and a cut or slow link between the hub and Mosquitto.

Each fault is checked against the same guarantee, from sets of reading ids
(device, epoch, seq): nothing the fleet sent is lost, nothing is stored twice,
nothing is stored that no device sent, and the hub recovers by itself (the test
only sends, resends what the agents' outboxes hold past their ack timeout, and
waits). The recovery time (fault over -> the hub stores new readings again) is
printed as ``RECOVERY <fault> <seconds>`` for docs/reliability.md. The real
processes are in ``tests/reliability/harness.py``.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import Deployment, deploy, run_fault

#: Each test starts PostgreSQL, Mosquitto and a hub (up to three times) on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.timeout(900)]


@pytest.fixture
def behind_relay(tmp_path: Path) -> Iterator[Deployment]:
    """PostgreSQL, and the hub reaching Mosquitto through a TCP relay the test can cut or slow."""
    yield from deploy(tmp_path, "postgresql", proxied=True)


@pytest.fixture
def on_sqlite(tmp_path: Path) -> Iterator[Deployment]:
    yield from deploy(tmp_path, "sqlite")


def test_disk_full_on_the_hub_database_loses_and_duplicates_nothing(on_sqlite: Deployment, tmp_path: Path) -> None:
    """Disk full on the SQLite volume, made with RLIMIT_FSIZE lowered on the running hub
    (``prlimit``): every write past 64 KiB of any file fails with EFBIG (CPython ignores
    SIGXFSZ), so no batch can be stored, as on a full volume; then the space comes back."""
    proc = on_sqlite.hub.proc
    assert proc is not None
    soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)

    def fault() -> None:
        before = on_sqlite.count()
        # The soft limit only: raising it back needs no privilege (the hard one would).
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (64 * 1024, hard))
        time.sleep(4.0)
        stuck = on_sqlite.count()
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
        # While the volume was full at most one batch already past its writes got in.
        assert stuck - before <= 2_000, "the disk-full fault did not stop the writes"

    run_fault(on_sqlite, tmp_path, "disk_full", fault)


def test_network_partition_between_hub_and_broker_loses_and_duplicates_nothing(behind_relay: Deployment,
                                                                               tmp_path: Path) -> None:
    """The hub-broker link is cut (every connection dropped, reconnects refused) for 5 s while the
    devices keep publishing to the broker; then it is restored. The broker queues for the hub's
    persistent session; what the hub had stored but not yet acknowledged is redelivered and
    recognised by the replay window (stored once, acknowledged again)."""
    proxy = behind_relay.proxy
    assert proxy is not None

    def fault() -> None:
        proxy.cut()
        time.sleep(5.0)
        proxy.restore()

    run_fault(behind_relay, tmp_path, "network_partition", fault)


def test_slow_link_to_a_slow_consumer_loses_and_duplicates_nothing(behind_relay: Deployment,
                                                                   tmp_path: Path) -> None:
    """For 6 s the hub receives through a link of 2 KB/s (fewer bytes a second than the fleet
    publishes): a consumer slower than its producers. The broker queues the difference; once the
    link is fast again the backlog drains; nothing is lost or stored twice."""
    proxy = behind_relay.proxy
    assert proxy is not None

    def fault() -> None:
        proxy.throttle(2048)
        time.sleep(6.0)
        proxy.throttle(0)

    run_fault(behind_relay, tmp_path, "slow_link", fault)
