"""Soak: N simulated devices for M minutes against a real ``iotguard hub`` on Mosquitto (mTLS) + PostgreSQL.

Devices are in a light mode: each has its own session keys, sequence
counter and sealer (registered in the hub's registry with the hub's real
posture and policy; the enrollment exchange itself is skipped, as in
bench/ingest.py), and they are multiplexed over a few MQTT connections of
one publisher certificate that holds an ACL grant for every device's
telemetry topic. Each device sends one reading every ``--interval``
seconds (spread evenly), so the offered load is ``devices / interval``
readings a second.

The hub is a separate ``python -m iotguard hub`` process; its resident
memory and open file descriptors are sampled every 5 s. At the end, after
the hub has drained, the stored readings are read back from PostgreSQL:

* ``lost``: sent (device, epoch, seq) not stored; ``duplicated``: stored more than once;
* latency: the hub's commit-batch time (``received_at``) minus the reading's
  timestamp, which the sender sets when it seals (same host clock);
* ``memory_growth``: (RSS at the end - RSS after warm-up) / RSS after warm-up,
  warm-up ending 30 s after the hub has stored a reading of every device (its
  per-device state - device cache, replay windows, posture - is full by then);
  ``memory_growth_first_fifth`` uses the first fifth of the run as warm-up instead.

Usage: python bench/soak.py [--quick] [--devices N] [--minutes M] [--interval S] [--connections K]
Results: bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import _client, start_mosquitto, tls_files  # noqa: E402
from sqlalchemy import create_engine, select  # noqa: E402

from iotguard.channel import SequenceAllocator, UplinkSealer  # noqa: E402
from iotguard.config import HubConfig  # noqa: E402
from iotguard.crypto import get_suite  # noqa: E402
from iotguard.hub.compose import build_hub_services  # noqa: E402
from iotguard.hub.schema import readings  # noqa: E402
from iotguard.identity import b64e, derive_hub_session, request_transcript, token_hash  # noqa: E402
from iotguard.wire import Reading, decode_reading, encode_reading  # noqa: E402

PG_BIN = Path(os.environ.get("IOTGUARD_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUITE = "chacha20-poly1305"


def start_postgres(base: Path, port: int) -> list[str]:
    """A throwaway PostgreSQL (as user postgres when run as root); returns the pg_ctl prefix."""
    prefix: list[str] = []
    base.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*prefix, str(PG_BIN / "initdb"), "-D", str(base / "data"), "-U", "postgres", "--auth=trust",
                    "-N"], check=True, capture_output=True)
    subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "log"), "-w", "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100", "start"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "hub"],
                   check=True, capture_output=True)
    return prefix


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


def register(core: object, n: int, ks: _Counters, prefix: str = "soak") -> list[UplinkSealer]:
    """Register ``n`` devices with session keys installed directly (light device mode)."""
    registry = core.lifecycle  # type: ignore[attr-defined]
    suite = get_suite(SUITE)
    out = []
    for i in range(n):
        device_id = f"{prefix}-{i:05d}"
        code = registry.add_device(device_id, "thermo-1")
        transcript = request_transcript("soak", {"d": device_id})
        _pub, keys = derive_hub_session(device_id, 1, SUITE, os.urandom(32), transcript)
        now = registry.clock.now()
        registry.store.enroll(device_id, token_hash(code.secret), now=now, identity_public_key=os.urandom(32),
                              cert_pem="", cert_serial=b64e(os.urandom(4)), cert_not_after=now + timedelta(days=30),
                              suite=SUITE, wrapped_key=registry._wrap(device_id, 1, keys))
        core.posture.sync(device_id)  # type: ignore[attr-defined]
        out.append(UplinkSealer(suite, device_id, 1, keys.uplink,
                                SequenceAllocator(ks, f"seq/{device_id}", reserve=1 << 16)))  # type: ignore[arg-type]
    return out


def _sample(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 devices for 1 minute")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between a device's readings")
    ap.add_argument("--connections", type=int, default=4, help="MQTT connections the devices share")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"), help="results JSON")
    args = ap.parse_args()
    if args.quick:
        args.devices, args.minutes = 500, 1.0
    tmp = Path(tempfile.mkdtemp(prefix="iotguard-soak-"))
    tmp.chmod(0o711)
    os.environ.setdefault("IOTGUARD_DEVICE_SECRET", str(tmp / "device.secret"))
    pg_port = 0
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        pg_port = s.getsockname()[1]
    pg_prefix = start_postgres(tmp / "pg", pg_port)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/hub"
    cfg = HubConfig(data_dir=str(tmp / "hub"), database_url=url)
    Path(cfg.data_dir).mkdir(parents=True, mode=0o700)
    core = build_hub_services(cfg)
    tls = tls_files(core, tmp)
    started = start_mosquitto(tmp, core)
    if started is None:
        print("soak: mosquitto is not installed", file=sys.stderr)
        return 2
    mosq, addr = started
    hub = None
    try:
        t0 = time.monotonic()
        counters = _Counters()
        sealers = register(core, args.devices, counters)
        probe = register(core, 1, counters, prefix="probe")[0]
        print(f"soak: registered {args.devices} devices in {time.monotonic() - t0:.0f} s", flush=True)
        env = {**os.environ, "IOTGUARD_HUB__DATA_DIR": cfg.data_dir, "IOTGUARD_HUB__DATABASE_URL": url,
               "IOTGUARD_HUB__BROKER_URL": f"mqtts://127.0.0.1:{addr.port}",
               "IOTGUARD_HUB__API_BIND": f"127.0.0.1:{pg_port + 1 if pg_port < 65000 else 18080}",
               "IOTGUARD_CONFIG": str(tmp / "none.toml")}
        log = (tmp / "hub.log").open("wb")
        hub = subprocess.Popen([sys.executable, "-m", "iotguard", "hub"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
        # Ready when a probe device's reading is stored (the hub's subscription exists: what
        # is published before it would be dropped by the broker, not lost by the hub).
        engine = create_engine(url)
        pc = _client("soak-probe", tls.publisher, tls)
        pc.connect(addr.host, addr.port)
        pc.loop_start()
        ready_by = time.monotonic() + 300
        while True:
            if hub.poll() is not None or time.monotonic() > ready_by:
                print((tmp / "hub.log").read_text()[-3000:], file=sys.stderr)
                return 1
            _seq, env0 = probe.seal(encode_reading(Reading(int(time.time() * 1000), {"temperature": 21.5},
                                                           "heating_control")))
            pc.publish(probe.topic, env0, qos=1)
            time.sleep(1.0)
            with engine.connect() as c:
                if c.execute(select(readings.c.id).where(readings.c.device_id == probe.device_id).limit(1)).first():
                    break
        pc.disconnect()
        pc.loop_stop()
        print("soak: hub ready; sending", flush=True)
        duration = args.minutes * 60.0
        rate = args.devices / args.interval
        sent: list[tuple[str, int, int]] = []
        sent_lock = threading.Lock()
        stop_at = time.monotonic() + duration

        def publisher(k: int) -> None:
            mine = sealers[k::args.connections]
            c = _client(f"soak-pub-{k}", tls.publisher, tls)
            c.max_inflight_messages_set(1000)
            c.max_queued_messages_set(0)
            c.connect(addr.host, addr.port)
            c.loop_start()
            gap = args.interval / max(1, len(mine))
            nxt = time.monotonic()
            i = 0
            local: list[tuple[str, int, int]] = []
            while time.monotonic() < stop_at:
                s = mine[i % len(mine)]
                seq, env_ = s.seal(encode_reading(Reading(int(time.time() * 1000), {"temperature": 21.5},
                                                          "heating_control")))
                c.publish(s.topic, env_, qos=1)
                local.append((s.device_id, 1, seq))
                i += 1
                nxt += gap
                delay = nxt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            time.sleep(2.0)
            c.disconnect()
            c.loop_stop()
            with sent_lock:
                sent.extend(local)

        samples: list[tuple[float, int, int]] = []
        threads = [threading.Thread(target=publisher, args=(k,)) for k in range(args.connections)]
        start = time.monotonic()
        start_wall = time.time()
        for t in threads:
            t.start()
        while time.monotonic() < stop_at:
            samples.append((time.monotonic() - start, *_sample(hub.pid)))
            time.sleep(5.0)
        for t in threads:
            t.join()
        deadline = time.monotonic() + 300
        stored: Counter[tuple[str, int, int]] = Counter()
        lat: list[float] = []
        while time.monotonic() < deadline:
            with engine.connect() as c:
                rows = c.execute(select(readings.c.device_id, readings.c.epoch, readings.c.seq,
                                        readings.c.received_at, readings.c.body)
                                 .where(readings.c.device_id != probe.device_id)).all()
            stored = Counter((str(d), int(e), int(q)) for d, e, q, _r, _b in rows)
            if not set(sent) - set(stored):
                break
            time.sleep(2.0)
        first_seen: dict[str, float] = {}
        for d, _e, _q, received, body in rows:
            lat.append(received.timestamp() * 1000.0 - decode_reading(bytes(body)).ts_ms)
            first_seen[d] = min(first_seen.get(d, received.timestamp()), received.timestamp())
        all_seen_s = max(first_seen.values()) - start_wall if first_seen else duration
        engine.dispose()
        lat.sort()

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else 0.0

        def growth(warm_s: float) -> tuple[float | None, int, int]:
            after = [s for s in samples if s[0] >= warm_s]
            if len(after) < 2:
                return None, 0, 0
            return round((samples[-1][1] - after[0][1]) / after[0][1], 4), after[0][1], after[0][2]

        growth_fifth, _r5, _f5 = growth(duration / 5)
        memory_growth, rss_warm, fds_warm = growth(all_seen_s + 30.0)
        rss_end = samples[-1][1]
        lost = len(set(sent) - set(stored))
        out = {
            "benchmark": "soak",
            "headline": {"name": "hub memory growth after warm-up over a soak (lost and duplicated must be 0)",
                         "unit": "fraction", "value": memory_growth, "goal": 0.05},
            "devices": args.devices, "minutes": args.minutes, "connections": args.connections,
            "offered_per_s": round(rate, 1), "sent": len(sent), "stored": sum(stored.values()),
            "throughput_per_s": round(len(sent) / duration, 1),
            "memory_growth": memory_growth, "memory_growth_first_fifth": growth_fifth,
            "warmup_s": round(all_seen_s + 30.0, 1),
            "rss_after_warmup_mb": round(rss_warm / 2**20, 1), "rss_end_mb": round(rss_end / 2**20, 1),
            "fds": {"after_warmup": fds_warm, "end": samples[-1][2], "max": max(s[2] for s in samples)},
            "lost": lost, "duplicated": sum(n - 1 for n in stored.values() if n > 1),
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "p99_latency_ms": pct(0.99),
            "samples": [{"t_s": round(t, 1), "rss_mb": round(r / 2**20, 1), "fds": f} for t, r, f in samples],
            "quick": args.quick, "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_average_end": os.getloadavg()[0],
        }
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=2))
        return 0 if lost == 0 and out["duplicated"] == 0 else 1
    finally:
        if hub is not None and hub.poll() is None:
            hub.terminate()
            hub.wait(timeout=30)
        mosq.terminate()
        subprocess.run([*pg_prefix, str(PG_BIN / "pg_ctl"), "-D", str(tmp / "pg" / "data"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
