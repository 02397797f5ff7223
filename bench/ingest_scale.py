"""Scale-out row of ``bench/ingest.py``: 1, 2 and 3 real hub processes on Mosquitto (mTLS) + PostgreSQL.

Setup: a throwaway PostgreSQL 15 (initdb/pg_ctl, run as ``postgres``),
Mosquitto with the production mTLS configuration, D devices enrolled
directly in that database. Then, for k in 1, 2, 3:

1. k ``python -m iotguard hub`` processes start, configured by the
   environment only (shared data dir = shared hub key store, same PostgreSQL
   URL, ``mqtts://`` broker URL, one client id ``scale-r<run>-k<k>-<i>`` each,
   shared subscription on, distinct API ports), and the bench waits until
   every one answers ``/health`` (it has connected to the broker and
   subscribed to ``$share/iotguard-hub/<telemetry>`` by then).
2. All k are paused together (SIGSTOP), N sealed envelopes are published
   (Mosquitto splits the shared subscription round-robin and queues for the
   paused members), then all k resume together (SIGCONT). So the start-up of
   k processes does not skew the timing, and the publisher does not compete
   with the drain.
3. Throughput = N / (time of the last stored reading - time of the first),
   polling ``SELECT count(*)`` on ``readings`` every 10 ms (queued drain).
4. Loss check: the set of stored (device, epoch, seq) must equal the set sent
   (lost, unexpected and duplicated counted; the unique constraint on
   (device, epoch, seq) makes a stored duplicate impossible, so the row count
   is compared with the set size as well).

Each poll also samples ``pg_stat_activity``: ``lock_wait_fraction`` is the
share of polls during the drain in which some hub transaction was waiting
for a row lock held by another hub's transaction.

CPU-seconds of the hub processes, Mosquitto and every PostgreSQL process are
read from /proc over the drain window, so ``docs/scaling.md`` can turn them
into per-1,000-reading costs. ``uptime`` (load) is recorded before each run:
other jobs share this machine's cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, text

from iotguard.channel import TELEMETRY_FILTER, UplinkSealer
from iotguard.config import HubConfig
from iotguard.hub.compose import build_hub_services
from iotguard.tls import client_context
from iotguard.wire import Reading, encode_reading

PG_BIN = Path(os.environ.get("IOTGUARD_PG_BIN", "/usr/lib/postgresql/15/bin"))
SHARED_FILTER = f"$share/iotguard-hub/{TELEMETRY_FILTER}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Stored count, and whether a hub's transaction is waiting for a row lock held by another's.
_POLL = text("SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM pg_stat_activity "
             "WHERE datname = current_database() AND wait_event_type = 'Lock')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """A throwaway PostgreSQL server (as tests/conftest.py ``postgres_server``), fsync on."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="iotguard-bench-pg-"))
        self.data = self.base / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.base, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self.prefix, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-N"], check=True, capture_output=True)
        self.port = _free_port()
        subprocess.run([*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"),
                        "-w", "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=on "
                        "-c max_connections=200", "start"], check=True, capture_output=True)
        admin = create_engine(f"{self.server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text('CREATE DATABASE "bench"'))
        admin.dispose()
        self.url = f"{self.server}/bench"

    @property
    def server(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The postmaster and all its children (backends, WAL writer, checkpointer, ...)."""
        master = int((self.data / "postmaster.pid").read_text().split()[0])
        return [master, *_children(master)]

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each live process, in seconds."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two samples (a process that started in between counts from zero)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _drop_session(addr: Any, client_id: str, tls: Any) -> None:
    """Remove a stopped hub's persistent session, or it keeps its place (and a share) in the shared group."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    c.tls_set_context(client_context(tls.ca, certfile=tls.hub))
    c.connect(addr.host, addr.port)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def _envelopes(sealers: list[UplinkSealer], per_device: int) -> tuple[list[tuple[str, bytes]], set[tuple[str, int, int]]]:
    msgs, sent = [], set()
    t = int(time.time() * 1000)
    for k in range(per_device):
        for s in sealers:
            seq, env = s.seal(encode_reading(Reading(t + k, {"temperature": 20.0 + (k % 50) / 10, "humidity": 45.5},
                                                     "research")))
            msgs.append((s.topic, env))
            sent.add((s.device_id, s.epoch, seq))
    return msgs, sent


class _Hubs:
    def __init__(self, tmp: Path, cfg: HubConfig, broker_url: str, client_ids: list[str]) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.ports: list[int] = []
        self.ca_file = Path(cfg.data_dir) / "fleet-ca.pem"
        for cid in client_ids:
            self.ports.append(_free_port())
            env = {**os.environ,
                   "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
                   "IOTGUARD_CONFIG": str(tmp / "no-config.toml"),
                   "IOTGUARD_HUB__DATA_DIR": cfg.data_dir,
                   "IOTGUARD_HUB__DATABASE_URL": cfg.database_url,
                   "IOTGUARD_HUB__BROKER_URL": broker_url,
                   "IOTGUARD_HUB__MQTT_CLIENT_ID": cid,
                   "IOTGUARD_HUB__SHARED_SUBSCRIPTION": "true",
                   "IOTGUARD_HUB__API_BIND": f"127.0.0.1:{self.ports[-1]}",
                   "IOTGUARD_HUB__EMBEDDED_BROKER_BIND": f"127.0.0.1:{_free_port()}"}
            log = tmp / f"{cid}.log"
            with log.open("wb") as f:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "iotguard", "hub"], env=env, stdout=f,
                                                   stderr=subprocess.STDOUT))
            self.logs.append(log)

    def wait_up(self, timeout: float = 120.0) -> None:
        """Until every hub answers /health (it connects and subscribes to the broker before serving)."""
        deadline = time.monotonic() + timeout
        pending = list(self.ports)
        while pending:
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError("hub processes did not come up")
            port = pending[0]
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/health", timeout=1.0,
                              verify=client_context(self.ca_file))
                if r.status_code == 200:
                    pending.pop(0)
                    continue
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)

    def signal(self, sig: signal.Signals) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig)

    def check(self) -> None:
        for p, log in zip(self.procs, self.logs, strict=True):
            if p.poll() is not None:
                raise RuntimeError(f"hub exited ({p.returncode}): {log.read_text()[-2000:]}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _cpu(hubs: _Hubs, mosq_pid: int, pg: Postgres) -> dict[str, dict[int, float]]:
    return {"hub": cpu_seconds([p.pid for p in hubs.procs]), "mosquitto": cpu_seconds([mosq_pid]),
            "postgres": cpu_seconds(pg.pids())}


def run_scale_out(quick: bool, tls_files: Any, start_mosquitto: Any, enroll_devices: Any, publish_all: Any,
                  repeats: int | None = None) -> dict[str, Any]:
    """Measure k = 1, 2, 3 hub processes ``repeats`` times (2, or 1 with ``quick``); returns the JSON section."""
    repeats = repeats or (1 if quick else 2)
    devices, per_device = (50, 120) if quick else (100, 300)
    suite = "chacha20-poly1305"
    tmp = Path(tempfile.mkdtemp(prefix="iotguard-bench-scale-"))
    tmp.chmod(0o711)  # Mosquitto started as root reads its files as its own user
    pg = Postgres()
    cfg = HubConfig(data_dir=str(tmp / "hub"), database_url=pg.url)
    Path(cfg.data_dir).mkdir(parents=True, mode=0o700)
    core = build_hub_services(cfg)
    mosq = None
    engine = create_engine(pg.url)
    try:
        mosq = start_mosquitto(tmp, core)
        if mosq is None:
            raise RuntimeError("the scale-out row needs Mosquitto")
        proc, addr = mosq
        tls = tls_files(core, tmp)
        sealers = enroll_devices(core, tmp / "devices", devices, suite, prefix="scale")
        runs = []
        for rep in range(repeats):
            rows = []
            load = uptime()
            for k in (1, 2, 3):
                rows.append(_one(k, rep, tmp, cfg, addr, tls, sealers, per_device, engine, pg, proc.pid,
                                 publish_all))
                r = rows[-1]
                print(f"  run {rep + 1} k={k}: {r['readings_per_s']:,.0f} readings/s  lost={r['lost']} "
                      f"dup={r['duplicated']} unexpected={r['unexpected']}", flush=True)
            one = rows[0]["readings_per_s"]
            runs.append({"uptime_before": load, "rows": rows,
                         "ratio_2_over_1": round(rows[1]["readings_per_s"] / one, 3),
                         "ratio_3_over_1": round(rows[2]["readings_per_s"] / one, 3)})
        with engine.connect() as c:
            n, size = c.execute(text("SELECT count(*), pg_total_relation_size('readings') FROM readings")).one()
            heap = c.execute(text("SELECT pg_relation_size('readings')")).scalar_one()
        return {
            "mode": "queued drain: hubs up and subscribed, paused (SIGSTOP) while N envelopes are queued, "
                    "resumed together (SIGCONT); first to last stored reading",
            "broker": "mosquitto (mTLS, TLS 1.3)", "database": "PostgreSQL 15 (fsync on, same machine)",
            "quick": quick, "suite": suite, "devices": devices, "messages_per_k": devices * per_device,
            "runs": runs,
            "readings_table": {"rows": n, "total_bytes": size, "heap_bytes": heap,
                               "bytes_per_row_total": round(size / n, 1), "bytes_per_row_heap": round(heap / n, 1)},
            "goal": "k=2 / k=1 >= 1.2, nothing lost",
        }
    finally:
        engine.dispose()
        core.store.engine.dispose()
        if mosq is not None:
            mosq[0].terminate()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _one(k: int, rep: int, tmp: Path, cfg: HubConfig, addr: Any, tls: Any, sealers: list[UplinkSealer],
         per_device: int, engine: Any, pg: Postgres, mosq_pid: int, publish_all: Any) -> dict[str, Any]:
    ids = [f"scale-r{rep}-k{k}-{i}" for i in range(k)]
    msgs, sent = _envelopes(sealers, per_device)
    n = len(msgs)
    with engine.connect() as c:
        base_id = c.execute(text("SELECT coalesce(max(id), 0) FROM readings")).scalar_one()
        base = c.execute(text("SELECT count(*) FROM readings")).scalar_one()
        wal0 = c.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).scalar_one()
    hubs = _Hubs(tmp, cfg, addr.url, ids)
    first = last = 0.0
    cpu0: dict[str, dict[int, float]] = {}
    samples = lock_samples = 0
    try:
        hubs.wait_up()  # every hub connected and subscribed to the shared group
        hubs.signal(signal.SIGSTOP)  # paused together: the broker queues for all k, none starts early
        publish_all(addr, msgs, wait=True, tls=tls)
        hubs.signal(signal.SIGCONT)
        deadline = time.monotonic() + 300
        with engine.connect() as c:
            while time.monotonic() < deadline:
                c.rollback()
                stored, lock_waiters = c.execute(_POLL).one()
                now = time.perf_counter()
                if first:
                    samples += 1
                    lock_samples += bool(lock_waiters)
                if not first and stored > base:
                    first = now
                    cpu0 = _cpu(hubs, mosq_pid, pg)
                if stored >= base + n:
                    last = now
                    break
                hubs.check()
                time.sleep(0.01)
        cpu1 = _cpu(hubs, mosq_pid, pg)
    finally:
        hubs.signal(signal.SIGCONT)
        hubs.stop()
    with engine.connect() as c:
        got = c.execute(text("SELECT device_id, epoch, seq FROM readings WHERE id > :b"), {"b": base_id}).all()
        wal1 = c.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).scalar_one()
    for cid in ids:  # remove the sessions, or they keep their place in the shared group
        _drop_session(addr, cid, tls)
    stored_set = {(d, int(e), int(s)) for d, e, s in got}
    elapsed = (last or time.perf_counter()) - first if first else float("inf")
    cpu = {name: round(cpu_delta(cpu0.get(name, {}), cpu1[name]), 3) for name in cpu1}
    return {
        "hubs": k, "messages": n, "stored": len(got), "seconds": round(elapsed, 3),
        "readings_per_s": round(len(got) / elapsed, 1),
        "lost": len(sent - stored_set), "unexpected": len(stored_set - sent), "duplicated": len(got) - len(stored_set),
        "cpu_seconds": cpu,
        "cpu_s_per_1000": {name: round(v * 1000 / max(len(got), 1), 4) for name, v in cpu.items()},
        "lock_wait_fraction": round(lock_samples / max(samples, 1), 3),
        "wal_bytes_per_reading": round(float(wal1 - wal0) / max(len(got), 1), 1),
    }

