"""Soak: N simulated devices for M minutes against a real ``iotguard hub`` on Mosquitto (mTLS) + PostgreSQL.

``iotguard sim soak`` and ``bench/soak.py`` run this. Devices are in a light
mode: each has its own session keys, sequence counter and sealer, and is
registered in the hub's registry with the hub's real posture and policy (the
enrollment exchange itself is skipped); they are multiplexed over a few MQTT
connections of one publisher certificate that holds a write grant on every
device's telemetry topic. Each device sends one reading every ``interval_s``
seconds (spread evenly), so the offered load is ``devices / interval_s``
readings a second.

The hub is a separate ``python -m iotguard hub`` process; its resident memory
and open file descriptors are sampled every ``sample_every_s``. At the end,
after the hub has drained, the stored readings are read back from PostgreSQL:

* ``lost``: sent (device, epoch, seq) not stored; ``duplicated``: stored more than once;
* latency: the hub's commit time (``received_at``) minus the reading's
  timestamp, which the sender sets when it seals (same host clock);
* ``memory_growth``: (RSS at the end - RSS at the end of the warm-up) / RSS at
  the end of the warm-up. **The warm-up is declared before the run**: the
  first :data:`WARMUP_FRACTION` of the minutes (:func:`warmup_seconds`),
  never chosen from the samples afterwards.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess  # nosec B404
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from iotguard.channel import SequenceAllocator, UplinkSealer
from iotguard.config import HubConfig
from iotguard.crypto import get_suite
from iotguard.errors import ConfigError
from iotguard.hub.compose import HubServices, build_hub_services
from iotguard.hub.mosquitto import BrokerLimits
from iotguard.hub.schema import readings
from iotguard.identity import b64e, derive_hub_session, request_transcript, token_hash
from iotguard.sim.soak_env import mqtt_client, publisher_tls, start_hub, start_mosquitto, start_postgres
from iotguard.wire import Reading, encode_reading

__all__ = ["WARMUP_FRACTION", "SoakSettings", "memory_growth", "percentile", "reconcile_keys", "run_soak",
           "warmup_seconds"]

#: The warm-up is the first fifth of the run, declared here before any run (not chosen from its samples).
WARMUP_FRACTION = 0.2
SUITE = "chacha20-poly1305"
#: Unacknowledged messages Mosquitto lets the hub hold (the production default of 20 caps the hub's
#: batches at 20 messages, as the hub acknowledges only after the commit).
HUB_INFLIGHT = 5000

Key = tuple[str, int, int]


@dataclass(frozen=True)
class SoakSettings:
    """What to run."""

    devices: int = 10_000
    minutes: float = 10.0
    interval_s: float = 10.0
    connections: int = 4
    sample_every_s: float = 5.0
    #: Seconds to wait after the run for the hub to drain before counting a reading lost.
    drain_s: float = 300.0

    def __post_init__(self) -> None:
        if self.devices < 1 or self.minutes <= 0 or self.interval_s <= 0 or self.connections < 1:
            raise ConfigError("soak needs devices >= 1, minutes > 0, interval > 0, connections >= 1")


def warmup_seconds(minutes: float) -> float:
    """The declared warm-up of a run of ``minutes``: its first :data:`WARMUP_FRACTION`."""
    return minutes * 60.0 * WARMUP_FRACTION


def memory_growth(samples: Sequence[tuple[float, int, int]], warmup_s: float) -> tuple[float | None, int]:
    """(growth fraction after the warm-up, RSS at its end) from (t, rss, fds) samples; None with < 2 after it."""
    after = [s for s in samples if s[0] >= warmup_s]
    if len(after) < 2:
        return None, 0
    return round((after[-1][1] - after[0][1]) / after[0][1], 4), after[0][1]


def percentile(sorted_xs: Sequence[float], p: float) -> float:
    """The ``p`` quantile (nearest rank below) of an ascending list; 0 when empty."""
    if not sorted_xs:
        return 0.0
    return round(sorted_xs[min(len(sorted_xs) - 1, int(p * len(sorted_xs)))], 1)


def reconcile_keys(sent: Sequence[Key], stored: Counter[Key]) -> dict[str, int]:
    """Lost (sent, not stored), duplicated (stored more than once) and unexpected (stored, never sent)."""
    sent_set = set(sent)
    return {"lost": len(sent_set - set(stored)), "duplicated": sum(n - 1 for n in stored.values() if n > 1),
            "unexpected": len(set(stored) - sent_set)}


class _Counters:
    """Sequence counters of the simulated devices, in memory (light device mode: a real device
    keeps them in its key store; 10,000 counters in one sealed file would cost a rewrite each)."""

    def __init__(self) -> None:
        self._c: dict[str, int] = {}

    def counter(self, name: str) -> int:
        return self._c.get(name, 0)

    def advance_counter(self, name: str, to_at_least: int) -> int:
        self._c[name] = max(self._c.get(name, 0), to_at_least)
        return self._c[name]


def register_light_devices(core: HubServices, n: int, prefix: str = "soak",
                           progress: Callable[[str], None] | None = None, workers: int = 6) -> list[UplinkSealer]:
    """Register ``n`` devices with session keys installed directly (light device mode).

    ``workers`` threads register in parallel: each registration is a few database round trips
    (the registry, the key epoch, the posture), so on PostgreSQL the time is mostly waiting.
    """
    registry = core.lifecycle
    suite = get_suite(SUITE)
    counters = _Counters()
    done = [0]
    lock = threading.Lock()

    def one(i: int) -> UplinkSealer:
        device_id = f"{prefix}-{i:05d}"
        code = registry.add_device(device_id, "thermo-1")
        transcript = request_transcript("soak", {"d": device_id})
        _pub, keys = derive_hub_session(device_id, 1, SUITE, os.urandom(32), transcript)
        now = registry.clock.now()
        registry.store.enroll(device_id, token_hash(code.secret), now=now, identity_public_key=os.urandom(32),
                              cert_pem="", cert_serial=b64e(os.urandom(4)), cert_not_after=now + timedelta(days=30),
                              suite=SUITE, wrapped_key=registry._wrap(device_id, 1, keys))
        core.posture.sync(device_id)
        with lock:
            done[0] += 1
            if progress is not None and done[0] % 1000 == 0:
                progress(f"registered {done[0]} devices")
        return UplinkSealer(suite, device_id, 1, keys.uplink,
                            SequenceAllocator(counters, f"seq/{device_id}", reserve=1 << 16))  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, range(n)))


def _sample(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _reading(ts_ms: int | None = None) -> bytes:
    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    return encode_reading(Reading(ts, {"temperature": 21.5}, "heating_control"))


def _stored(url: str, exclude: str) -> tuple[Counter[Key], dict[Key, float]]:
    """Stored keys (with multiplicity) and when each was committed (epoch ms), the probe device excluded."""
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(select(readings.c.device_id, readings.c.epoch, readings.c.seq, readings.c.received_at)
                             .where(readings.c.device_id != exclude)).all()
    finally:
        engine.dispose()
    stored: Counter[Key] = Counter((str(d), int(e), int(q)) for d, e, q, _r in rows)
    # Bodies are sealed under subject data keys (ADR 0405): the send time comes from the sender's record.
    committed = {(str(d), int(e), int(q)): r.timestamp() * 1000.0 for d, e, q, r in rows}
    return stored, committed


class _Run:
    """One soak against running servers."""

    def __init__(self, settings: SoakSettings, sealers: list[UplinkSealer], probe: UplinkSealer,
                 tls: Any, broker: Any, url: str, progress: Callable[[str], None]) -> None:
        self.s, self.sealers, self.probe, self.tls, self.broker, self.url = settings, sealers, probe, tls, broker, url
        self.progress = progress
        self.sent: list[Key] = []
        #: When each reading was sealed (epoch ms: its own timestamp).
        self.sealed_at: dict[Key, float] = {}
        self._lock = threading.Lock()
        self.stop_at = 0.0

    def wait_ready(self, hub_pid_alive: Callable[[], bool], timeout: float = 300.0) -> bool:
        """Ready when a probe reading is stored (the hub's subscription exists by then)."""
        c = mqtt_client("soak-probe", self.tls)
        c.connect(self.broker.host, self.broker.port)
        c.loop_start()
        engine = create_engine(self.url)
        try:
            until = time.monotonic() + timeout
            while time.monotonic() < until and hub_pid_alive():
                c.publish(self.probe.topic, self.probe.seal(_reading())[1], qos=1)
                time.sleep(1.0)
                with engine.connect() as conn:
                    q = select(readings.c.id).where(readings.c.device_id == self.probe.device_id).limit(1)
                    if conn.execute(q).first():
                        return True
            return False
        finally:
            engine.dispose()
            c.disconnect()
            c.loop_stop()

    def publisher(self, k: int) -> None:
        mine = self.sealers[k::self.s.connections]
        if not mine:
            return
        c = mqtt_client(f"soak-pub-{k}", self.tls)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.connect(self.broker.host, self.broker.port)
        c.loop_start()
        gap = self.s.interval_s / len(mine)
        nxt = time.monotonic()
        i = 0
        local: list[tuple[Key, float]] = []
        while time.monotonic() < self.stop_at:
            sealer = mine[i % len(mine)]
            ts_ms = time.time() * 1000.0
            seq, env = sealer.seal(_reading(int(ts_ms)))
            c.publish(sealer.topic, env, qos=1)
            local.append(((sealer.device_id, 1, seq), ts_ms))
            i += 1
            nxt += gap
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        time.sleep(2.0)  # let paho finish its in-flight publishes
        c.disconnect()
        c.loop_stop()
        with self._lock:
            self.sent.extend(k for k, _t in local)
            self.sealed_at.update(local)


def run_soak(settings: SoakSettings, *, progress: Callable[[str], None] = print,
             workdir: Path | None = None) -> dict[str, Any]:
    """Start PostgreSQL, Mosquitto and a hub; soak; return the figures (see the module docstring).

    Raises:
        ConfigError: PostgreSQL or mosquitto is missing, or the hub did not become ready.
    """
    tmp = Path(tempfile.mkdtemp(prefix="iotguard-soak-", dir=workdir))
    tmp.chmod(0o711)
    os.environ.setdefault("IOTGUARD_DEVICE_SECRET", str(tmp / "device.secret"))
    pg = start_postgres(tmp / "pg")
    procs: list[Any] = []
    try:
        cfg = HubConfig(data_dir=str(tmp / "hub"), database_url=pg.url)
        Path(cfg.data_dir).mkdir(parents=True, mode=0o700)
        core = build_hub_services(cfg)
        tls = publisher_tls(core, tmp)
        mosq, broker = start_mosquitto(tmp, core, BrokerLimits(max_queued_messages=2_000_000,
                                                               max_inflight_messages=HUB_INFLIGHT))
        procs.append(mosq)
        t0 = time.monotonic()
        sealers = register_light_devices(core, settings.devices, progress=progress)
        probe = register_light_devices(core, 1, prefix="probe")[0]
        register_s = time.monotonic() - t0
        progress(f"registered {settings.devices} devices in {register_s:.0f} s")
        hub = start_hub(cfg.data_dir, pg.url, broker, tmp / "hub.log")
        procs.insert(0, hub)
        run = _Run(settings, sealers, probe, tls, broker, pg.url, progress)
        if not run.wait_ready(lambda: hub.poll() is None):
            raise ConfigError("the hub did not store a probe reading: " + (tmp / "hub.log").read_text()[-2000:])
        progress("hub ready; sending")
        pg_pid = int((pg.base / "data" / "postmaster.pid").read_text().split()[0])
        return _measure(settings, run, {"hub": [hub.pid], "mosquitto": [mosq.pid], "postgresql": [pg_pid]},
                        register_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _measure(settings: SoakSettings, run: _Run, pids: dict[str, list[int]], register_s: float) -> dict[str, Any]:
    hub_pid = pids["hub"][0]
    duration = settings.minutes * 60.0
    warm = warmup_seconds(settings.minutes)
    run.stop_at = time.monotonic() + duration
    threads = [threading.Thread(target=run.publisher, args=(k,), daemon=True) for k in range(settings.connections)]
    start = time.monotonic()
    cpu0 = {name: _cpu_seconds(p) for name, p in pids.items()}
    own0 = time.process_time()
    for t in threads:
        t.start()
    samples: list[tuple[float, int, int]] = []
    while time.monotonic() < run.stop_at:
        samples.append((time.monotonic() - start, *_sample(hub_pid)))
        time.sleep(settings.sample_every_s)
    samples.append((time.monotonic() - start, *_sample(hub_pid)))
    cpu1 = {name: _cpu_seconds(p) for name, p in pids.items()}
    cpu1["soak_driver"], cpu0["soak_driver"] = time.process_time(), own0
    for t in threads:
        t.join()
    drain_until = time.monotonic() + settings.drain_s
    while True:
        stored, committed = _stored(run.url, run.probe.device_id)
        if not set(run.sent) - set(stored) or time.monotonic() > drain_until:
            break
        time.sleep(2.0)
    drained_s = time.monotonic() - start - duration
    lat = sorted(at - run.sealed_at[k] for k, at in committed.items() if k in run.sealed_at)
    growth, rss_warm = memory_growth(samples, warm)
    counts = reconcile_keys(run.sent, stored)
    return {
        "devices": settings.devices, "minutes": settings.minutes, "connections": settings.connections,
        "interval_s": settings.interval_s, "offered_per_s": round(settings.devices / settings.interval_s, 1),
        "sent": len(run.sent), "stored": sum(stored.values()),
        "throughput_per_s": round(len(run.sent) / duration, 1),
        **counts,
        "warmup_rule": f"first {WARMUP_FRACTION:.0%} of the minutes, declared before the run",
        "warmup_s": round(warm, 1), "memory_growth": growth,
        "rss_after_warmup_mb": round(rss_warm / 2**20, 1), "rss_end_mb": round(samples[-1][1] / 2**20, 1),
        "fds": {"end": samples[-1][2], "max": max(s[2] for s in samples)},
        "latency_ms": {"p50": percentile(lat, 0.5), "p90": percentile(lat, 0.9), "p99": percentile(lat, 0.99),
                       "max": percentile(lat, 1.0)},
        "p99_latency_ms": percentile(lat, 0.99),
        # CPU seconds per 1,000 readings sent, over the sending window, of each process of the pipeline.
        "cpu_s_per_1000": {name: round((cpu1[name] - cpu0[name]) / max(1, len(run.sent)) * 1000, 3)
                           for name in cpu1},
        "drain_after_run_s": round(max(0.0, drained_s), 1), "register_s": round(register_s, 1),
        "samples": [{"t_s": round(t, 1), "rss_mb": round(r / 2**20, 1), "fds": f} for t, r, f in samples],
        "machine": platform.machine(), "cpus": os.cpu_count(), "load_average_end": os.getloadavg()[0],
    }


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of these processes and their children (PostgreSQL's backends are the postmaster's)."""
    wanted, total = set(pids), 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) in wanted or int(fields[1]) in wanted:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def write_report(report: dict[str, Any], path: Path) -> None:
    """The report as JSON (samples included)."""
    path.write_text(json.dumps(report, indent=2) + "\n")
