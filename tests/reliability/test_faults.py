"""Fault injection with real processes: an ``iotguard hub`` on Mosquitto (mTLS) and PostgreSQL
(or SQLite), a simulated fleet of real agents, and one fault while it sends.

Each fault is checked against the same guarantee, from sets of reading ids
(device, epoch, seq): nothing the fleet sent is lost, nothing is stored twice,
nothing is stored that no device sent, and the hub recovers by itself (the test
only sends, resends what the agents' outboxes hold past their ack timeout, and
waits). The recovery time (fault over -> the hub stores new readings again) is
printed as ``RECOVERY <fault> <seconds>`` for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from iotguard.hub.schema import readings
from iotguard.hub.stores.receipts import receipts
from iotguard.sim import Fleet
from tests.conftest import MOSQUITTO, PG_BIN, MosquittoTls, _missing, free_port, wait_port
from tests.e2e.harness import HubProcess, assert_exactly_once, wait_acknowledged

#: Each test starts PostgreSQL, Mosquitto and a hub (up to three times) on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.mosquitto, pytest.mark.timeout(900)]

#: How long a hub may take to come up on a loaded 2-core machine.
_START_S = 120.0


class _Postgres:
    """A PostgreSQL server of its own (the session one is shared by other tests), stoppable."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            _missing("PostgreSQL server binaries")
        self.base = Path(tempfile.mkdtemp(prefix="iotguard-pgf-"))
        self.data = self.base / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self.prefix, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-N"], check=True, capture_output=True)
        self.port = free_port()
        self.start()
        subprocess.run([*self.prefix, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "hub"], check=True, capture_output=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/hub"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args],
                       check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._ctl("-l", str(self.base / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=on", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")

    def close(self) -> None:
        subprocess.run([*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


class _TcpProxy:
    """A TCP relay from 127.0.0.1:``port`` to ``target``, standing for the network between hub and broker.

    ``cut()`` drops every relayed connection and refuses new ones (a partition: the hub's
    reconnect attempts fail) until ``restore()``; ``throttle(bps)`` relays at most ``bps`` bytes
    a second in each direction (a slow link: the hub consumes slower than the devices publish).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.bytes_per_s = 0.0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            with self._lock:
                self._socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(16384 if not self.bytes_per_s else 1024):
                dst.sendall(data)
                if self.bytes_per_s:
                    time.sleep(len(data) / self.bytes_per_s)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                with contextlib.suppress(OSError):
                    x.shutdown(socket.SHUT_RDWR)
                x.close()

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            socks, self._socks = self._socks, []
        for x in socks:
            with contextlib.suppress(OSError):
                x.shutdown(socket.SHUT_RDWR)
            x.close()

    def restore(self) -> None:
        self._open.set()

    def throttle(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


class _Deployment:
    def __init__(self, hub: HubProcess, broker: MosquittoTls, database_url: str, pg: _Postgres | None,
                 proxy: _TcpProxy | None = None) -> None:
        self.hub, self.broker, self.database_url, self.pg, self.proxy = hub, broker, database_url, pg, proxy

    def restart_broker(self) -> None:
        self.broker.stop()
        time.sleep(2.0)
        log = self.broker.log.with_name("mosquitto-restarted.log")
        # The test wrote the pid file as root (start_mosquitto_tls); Mosquitto, running as its
        # own user, must be able to write it again.
        self.broker.pid_file.unlink(missing_ok=True)
        with log.open("wb") as log_f:
            self.broker.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.broker.conf_dir / "mosquitto.conf")],
                                                stdout=log_f, stderr=subprocess.STDOUT)
        try:
            wait_port(self.broker.port, timeout=30)
        except TimeoutError:
            raise RuntimeError("mosquitto did not come back: " + log.read_text()) from None
        if not self.broker.pid_file.exists():
            self.broker.pid_file.write_text(str(self.broker.proc.pid))

    def stored(self) -> Counter[tuple[str, int, int]]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as c:
                rows = c.execute(select(readings.c.device_id, readings.c.epoch, readings.c.seq)).all()
        finally:
            engine.dispose()
        return Counter((str(d), int(e), int(s)) for d, e, s in rows)

    def receipts(self) -> Counter[str]:
        """Privacy receipts stored, per device."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as c:
                rows = c.execute(select(receipts.c.device_id)).all()
        finally:
            engine.dispose()
        return Counter(str(d) for (d,) in rows)

    def count(self) -> int:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as c:
                return int(c.execute(select(func.count()).select_from(readings)).scalar() or 0)
        except Exception:  # the database may be the thing that is down
            return -1
        finally:
            engine.dispose()


def _deploy(tmp_path: Path, database: str, *, proxied: bool = False) -> Iterator[_Deployment]:
    if not Path(MOSQUITTO).exists():
        _missing("mosquitto")
    pg = _Postgres() if database == "postgresql" else None
    hub = HubProcess(tmp_path, database_url=pg.url if pg else "")
    from tests.conftest import start_mosquitto_tls

    broker = hub.use_mosquitto(start_mosquitto_tls)
    proxy = None
    if proxied:  # only the hub reaches the broker through the relay; the devices connect directly
        proxy = _TcpProxy(broker.port)
        hub.env["IOTGUARD_HUB__BROKER_URL"] = f"mqtts://127.0.0.1:{proxy.port}"
    url = pg.url if pg else f"sqlite:///{tmp_path / 'hub' / 'hub.db'}"
    try:
        hub.start(timeout=_START_S)
        yield _Deployment(hub, broker, url, pg, proxy)
    finally:
        hub.stop()
        if proxy is not None:
            proxy.close()
        broker.stop()
        shutil.rmtree(broker.conf_dir.parent, ignore_errors=True)
        if pg is not None:
            pg.close()


@pytest.fixture
def on_postgres(tmp_path: Path) -> Iterator[_Deployment]:
    yield from _deploy(tmp_path, "postgresql")


@pytest.fixture
def behind_relay(tmp_path: Path) -> Iterator[_Deployment]:
    """PostgreSQL, and the hub reaching Mosquitto through a TCP relay the test can cut or slow."""
    yield from _deploy(tmp_path, "postgresql", proxied=True)


@pytest.fixture
def on_sqlite(tmp_path: Path) -> Iterator[_Deployment]:
    yield from _deploy(tmp_path, "sqlite")


def _run_fault(dep: _Deployment, tmp_path: Path, name: str, fault: Callable[[], None], *,
               check_fleet: Callable[[Fleet], None] | None = None) -> float:
    """Send while ``fault`` runs; check the guarantee (and ``check_fleet``); return the recovery time in seconds."""
    hub = dep.hub
    fleet = Fleet(hub.provisioner(hub.operator_token()), hub_url=hub.api_url, broker_url=hub.broker_url,
                  data_dir=tmp_path / "fleet", ack_timeout_s=3.0, receipt_every=5)
    fleet.add_devices(6)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            fleet.send_round()
            fleet.resend_due()
            time.sleep(0.05)

    sender = threading.Thread(target=traffic)
    sender.start()
    recovery = -1.0
    try:
        time.sleep(3.0)
        fault()
        over = time.monotonic()
        at_end = dep.count()
        while time.monotonic() - over < 90:
            n = dep.count()
            if n > max(at_end, 0):
                recovery = time.monotonic() - over
                break
            time.sleep(0.1)
        time.sleep(2.0)
    finally:
        stop.set()
        sender.join()
    try:
        wait_acknowledged(fleet, name)
        time.sleep(0.5)
        sent = set(fleet.submitted)
        assert_exactly_once(sent, dep.stored(), name)
        assert len(sent) > 100
        if check_fleet is not None:
            check_fleet(fleet)
    finally:
        fleet.close()
    assert recovery >= 0, f"{name}: the hub did not store anything within 90 s of the fault's end"
    print(f"RECOVERY {name} {recovery:.2f}")
    return recovery


def test_broker_restart_loses_and_duplicates_nothing(on_postgres: _Deployment, tmp_path: Path) -> None:
    _run_fault(on_postgres, tmp_path, "broker_restart", on_postgres.restart_broker)


def test_postgresql_stop_and_start_loses_and_duplicates_nothing(on_postgres: _Deployment, tmp_path: Path) -> None:
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

    _run_fault(on_postgres, tmp_path, "postgresql_restart", fault, check_fleet=receipts_kept_and_stored_once)


def test_sigkill_of_the_hub_at_random_moments_loses_and_duplicates_nothing(on_postgres: _Deployment,
                                                                          tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))

    def fault() -> None:
        for _ in range(3):
            time.sleep(rng.uniform(0.1, 1.5))
            on_postgres.hub.kill()
            on_postgres.hub.start(timeout=_START_S)

    _run_fault(on_postgres, tmp_path, "sigkill_random", fault)


def test_stalled_hub_slow_consumer_loses_and_duplicates_nothing(on_postgres: _Deployment, tmp_path: Path) -> None:
    """The consumer stops consuming (SIGSTOP) for 5 s while devices keep publishing, then resumes."""
    proc = on_postgres.hub.proc
    assert proc is not None

    def fault() -> None:
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(5.0)
        os.kill(proc.pid, signal.SIGCONT)

    _run_fault(on_postgres, tmp_path, "slow_consumer", fault)


def test_disk_full_on_the_hub_database_loses_and_duplicates_nothing(on_sqlite: _Deployment, tmp_path: Path) -> None:
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

    _run_fault(on_sqlite, tmp_path, "disk_full", fault)


def test_network_partition_between_hub_and_broker_loses_and_duplicates_nothing(behind_relay: _Deployment,
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

    _run_fault(behind_relay, tmp_path, "network_partition", fault)


def test_slow_link_to_a_slow_consumer_loses_and_duplicates_nothing(behind_relay: _Deployment,
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

    _run_fault(behind_relay, tmp_path, "slow_link", fault)
