"""Scale-out for real: three ``iotguard hub`` processes on one Mosquitto (mTLS, shared
subscription) and one PostgreSQL, a simulated fleet, one hub killed with SIGKILL mid-run
and restarted. The set of stored readings must equal the set sent, none twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from iotguard.hub.schema import readings
from iotguard.sim import Fleet
from tests.conftest import MosquittoTls
from tests.e2e.harness import HubProcess, assert_exactly_once, wait_acknowledged

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.postgres]


@pytest.fixture
def hubs(tmp_path: Path, postgres_url: str,
         mosquitto_tls: Callable[[dict[str, str]], MosquittoTls]) -> Iterator[list[HubProcess]]:
    first = HubProcess(tmp_path, database_url=postgres_url, name="hub-0")
    first.use_mosquitto(mosquitto_tls)
    procs = [first, first.peer("hub-1"), first.peer("hub-2")]
    try:
        for hub in procs:  # one after another: the first creates the schema, the CA and the keys
            hub.start()
        yield procs
    finally:
        for hub in procs:
            hub.stop()


def _stored(database_url: str) -> Counter[tuple[str, int, int]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            rows = c.execute(select(readings.c.device_id, readings.c.epoch, readings.c.seq)).all()
    finally:
        engine.dispose()
    return Counter((str(d), int(e), int(s)) for d, e, s in rows)


def test_three_hubs_share_the_load_and_a_killed_hub_loses_nothing(hubs: list[HubProcess], tmp_path: Path,
                                                                  postgres_url: str) -> None:
    first = hubs[0]
    token = first.operator_token()
    fleet = Fleet(first.provisioner(token), hub_url=first.api_url, broker_url=first.broker_url,
                  data_dir=tmp_path / "fleet", ack_timeout_s=3.0)
    fleet.add_devices(9)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            fleet.send_round()
            time.sleep(0.03)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        time.sleep(4.0)
        before_kill = {hub.name: hub.stats(token)["stored"] for hub in hubs}
        hubs[1].kill()  # SIGKILL mid-run: its in-flight batch is neither acknowledged nor lost
        time.sleep(2.0)
        hubs[1].start()
        time.sleep(3.0)
    finally:
        stop.set()
        sender.join()
    try:
        wait_acknowledged(fleet, "scale-out", hubs=hubs)
        time.sleep(0.5)
        sent = set(fleet.submitted)
        assert_exactly_once(sent, _stored(postgres_url), f"rejections {first.stats(token)['rejected_total']}")
        assert len(sent) > 200
        # The shared subscription split the load: every hub stored readings before the kill.
        assert all(n > 0 for n in before_kill.values()), before_kill
    finally:
        fleet.close()
