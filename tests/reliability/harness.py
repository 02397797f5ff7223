"""Real processes for the fault-injection tests: a stoppable PostgreSQL (with a streaming replica),
a TCP relay standing for the network (cut, slowed or black-holed), a deployment of an ``iotguard
hub`` on Mosquitto, and the send-while-a-fault-runs loop that checks nothing is lost or duplicated."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import create_engine, func, select

from iotguard.hub.schema import readings
from iotguard.hub.stores.receipts import receipts
from iotguard.sim import Fleet
from tests.conftest import MOSQUITTO, PG_BIN, MosquittoTls, _missing, free_port, wait_port
from tests.e2e.harness import HubProcess, assert_exactly_once, wait_acknowledged

#: How long a hub may take to come up on a loaded 2-core machine.
START_S = 120.0


class Postgres:
    """A PostgreSQL server of its own (the session one is shared by other tests), stoppable."""

    def __init__(self, *, replica_of: Postgres | None = None) -> None:
        """A new server, or (``replica_of``) a streaming replica of one, cloned with ``pg_basebackup -R``."""
        if not (PG_BIN / "initdb").exists():
            _missing("PostgreSQL server binaries")
        self.base = Path(tempfile.mkdtemp(prefix="iotguard-pgf-"))
        self.data = self.base / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        if replica_of is not None:
            subprocess.run([*self.prefix, str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p",
                            str(replica_of.port), "-U", "postgres", "-D", str(self.data), "-R", "-X", "stream",
                            # an immediate checkpoint: the default spread one paces the fresh database's
                            # dirty pages over minutes (95 s of the test's setup on a loaded machine)
                            "-c", "fast"],
                           check=True, capture_output=True, timeout=120)
            self.start()
            self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/hub"
            return
        subprocess.run([*self.prefix, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-N"], check=True, capture_output=True)
        self.start()
        subprocess.run([*self.prefix, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "hub"], check=True, capture_output=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/hub"

    def kill(self) -> None:
        """The server dies (``pg_ctl stop -m immediate``: no shutdown checkpoint, clients cut)."""
        self._ctl("-m", "immediate", "-w", "stop")

    def promote(self) -> None:
        self._ctl("-w", "promote")

    def sql(self, statement: str) -> str:
        out = subprocess.run([*self.prefix, str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                              "postgres", "-d", "hub", "-tAc", statement], check=True, capture_output=True,
                             text=True, timeout=60)
        return out.stdout.strip()


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


class PostgresPair:
    """A primary and a synchronous streaming replica: a commit the primary acknowledges is on the
    replica too (``synchronous_standby_names = '*'``), so promoting the replica loses nothing
    acknowledged. ``url`` names both hosts with ``target_session_attrs=read-write`` (libpq
    multi-host): a client connects to whichever one accepts writes."""

    def __init__(self) -> None:
        self.primary = Postgres()
        self.replica = Postgres(replica_of=self.primary)
        deadline = time.monotonic() + 60
        while self.primary.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "0":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica does not stream")
            time.sleep(0.2)
        self.primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
        self.primary.sql("SELECT pg_reload_conf()")
        self.url = (f"postgresql+psycopg://postgres@/hub?host=127.0.0.1:{self.primary.port}"
                    f"&host=127.0.0.1:{self.replica.port}&target_session_attrs=read-write")

    def close(self) -> None:
        self.replica.close()
        self.primary.close()


class TcpProxy:
    """A TCP relay from 127.0.0.1:``port`` to ``target``, standing for the network between hub and broker.

    ``cut()`` drops every relayed connection and refuses new ones (a partition: the hub's
    reconnect attempts fail) until ``restore()``; ``throttle(bps)`` relays at most ``bps`` bytes
    a second in each direction (a slow link: the hub consumes slower than the devices publish);
    ``black_hole()`` silently stops forwarding until ``restore()``: no connection is closed or
    refused, bytes sent are held (in flight) and new connections are not answered, so only a
    timeout can tell (``accepted`` counts connections, to see when the hub tries a new one).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._flowing = threading.Event()
        self._flowing.set()
        self.accepted = 0
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
            self.accepted += 1
            self._flowing.wait()  # a black hole: the connection is never answered
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
                self._flowing.wait()  # held in flight while the link is a black hole
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
        self._flowing.set()

    def black_hole(self) -> None:
        self._flowing.clear()

    def throttle(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self.cut()
        self.listener.close()


class Deployment:
    def __init__(self, hub: HubProcess, broker: MosquittoTls, database_url: str, pg: Postgres | None,
                 proxy: TcpProxy | None = None) -> None:
        self.hub, self.broker, self.database_url, self.pg, self.proxy = hub, broker, database_url, pg, proxy
        self.pair: PostgresPair | None = None

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


def deploy(tmp_path: Path, database: str, *, proxied: bool = False,
           env: dict[str, str] | None = None) -> Iterator[Deployment]:
    if not Path(MOSQUITTO).exists():
        _missing("mosquitto")
    pair = PostgresPair() if database == "failover" else None
    pg = pair.primary if pair else Postgres() if database == "postgresql" else None
    db_url = pair.url if pair else pg.url if pg else ""
    hub = HubProcess(tmp_path, database_url=db_url)
    hub.env.update(env or {})
    from tests.conftest import start_mosquitto_tls

    broker = hub.use_mosquitto(start_mosquitto_tls)
    proxy = None
    if proxied:  # only the hub reaches the broker through the relay; the devices connect directly
        proxy = TcpProxy(broker.port)
        hub.env["IOTGUARD_HUB__BROKER_URL"] = f"mqtts://127.0.0.1:{proxy.port}"
    url = db_url or f"sqlite:///{tmp_path / 'hub' / 'hub.db'}"
    try:
        try:
            hub.start(timeout=START_S)
        except RuntimeError as exc:  # the broker's side of a failed start, before teardown deletes its log
            log = broker.log.read_text(errors="replace")[-4000:] if broker.log.exists() else "(no log)"
            raise RuntimeError(f"{exc}\n--- mosquitto log (tail) ---\n{log}") from None
        dep = Deployment(hub, broker, url, pg, proxy)
        dep.pair = pair
        yield dep
    finally:
        hub.stop()
        if proxy is not None:
            proxy.close()
        broker.stop()
        shutil.rmtree(broker.conf_dir.parent, ignore_errors=True)
        if pair is not None:
            pair.close()
        elif pg is not None:
            pg.close()


def run_fault(dep: Deployment, tmp_path: Path, name: str, fault: Callable[[], None], *,
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




class AgentProcess:
    """``python -m iotguard agent`` for one device; its output is collected line by line with the
    monotonic time each line arrived (a pipe, not a file: a disk-full fault must not hit the log)."""

    def __init__(self, hub: HubProcess, tmp: Path, device_id: str, *, interval: float = 0.1,
                 env: dict[str, str] | None = None, prefix: list[str] | None = None,
                 model: str = "thermo-1") -> None:
        self.hub, self.device_id = hub, device_id
        self.data_dir = tmp / "agents" / device_id
        self.env = {**os.environ, "IOTGUARD_CONFIG": str(tmp / "no-config.toml"), **(env or {})}
        self.interval, self.model = interval, model
        self.prefix = prefix or []
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[tuple[float, str]] = []

    def start(self, code: str | None = None) -> None:
        args = [*self.prefix, sys.executable, "-m", "iotguard", "agent", "--device-id", self.device_id,
                "--data-dir", str(self.data_dir), "--hub-url", self.hub.api_url,
                "--broker-url", self.hub.broker_url, "--interval", str(self.interval), "--model", self.model,
                "--health-interval", "0", *(["--enroll", code] if code else [])]
        self.proc = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        time.sleep(0.2)  # the reader thread takes the last lines


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` every 0.1 s; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
