"""One device flooding at 100x its quota: the other devices' ingest latency, against the unloaded run.

The hub's real :class:`IngestProcessor` (strict parse, device lookup, quotas,
batched AEAD open, replay window, Cedar publish decision, durable SQLite
commit) is fed in real time the way :class:`iotguard.hub.mqtt_ingest.MqttIngest`
feeds it: every message has an arrival time on a schedule, the worker takes
whatever has arrived (up to ``batch_max_messages``) and processes it, so a
worker that falls behind builds a backlog and every later message waits.
The latency of a message is commit time minus arrival time, for the
well-behaved devices only.

Three runs with the same well-behaved devices (each well under its quota):

* ``unloaded``: them alone (the baseline, measured in the same run);
* ``flood``: plus one device sending at 100x its quota, quotas on (the default);
* ``flood_no_quota``: the same flood with quotas off (what the mechanism buys).

Headline: p99 latency of the well-behaved devices under flood / unloaded
(goal <= 2). Usage: python bench/overload.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import enroll_devices, tune_gc_for_ingest  # noqa: E402

from iotguard.channel import UplinkSealer  # noqa: E402
from iotguard.config import HubConfig  # noqa: E402
from iotguard.hub.compose import build_hub_services  # noqa: E402
from iotguard.hub.ingest import Incoming, IngestProcessor, admission_from_config  # noqa: E402
from iotguard.wire import Reading, encode_reading  # noqa: E402

QUOTA_RATE = 20.0  # readings a second per device
NORMAL_RATE = 5.0  # what each well-behaved device sends (a quarter of its quota)
FLOOD_FACTOR = 100  # the flooder sends at 100x its quota


def _schedule(sealers: list[UplinkSealer], rate: float, seconds: float, phase: float) -> list[tuple[float, str, bytes]]:
    out = []
    t0 = int(time.time() * 1000)
    n = int(rate * seconds)
    for i, s in enumerate(sealers):
        for k in range(n):
            _seq, env = s.seal(encode_reading(Reading(t0 + k, {"temperature": 20.5, "humidity": 45.5}, "research")))
            out.append(((k + (i * 0.618 + phase) % 1.0) / rate, s.topic, env))
    return out


def _run(proc: IngestProcessor, normal: list[tuple[float, str, bytes]], flood: list[tuple[float, str, bytes]],
         batch_max: int) -> dict[str, object]:
    flood_topic = flood[0][1] if flood else None
    timeline = sorted(normal + flood, key=lambda m: m[0])
    lat: list[float] = []
    start = time.monotonic()
    i = 0
    rejected = 0
    while i < len(timeline):
        now = time.monotonic() - start
        if timeline[i][0] > now:
            time.sleep(min(0.002, timeline[i][0] - now))
            continue
        j = i
        while j < len(timeline) and j - i < batch_max and timeline[j][0] <= now:
            j += 1
        batch = timeline[i:j]
        out = proc.process([Incoming(topic, env, None, start + t) for t, topic, env in batch])
        done = time.monotonic()
        rejected += sum(out.rejected.values())
        lat += [(done - (start + t)) * 1000.0 for t, topic, _e in batch if topic != flood_topic]
        i = j
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2)

    return {"messages": len(timeline), "others": len(lat), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "rejected": dict(proc.stats.snapshot()["rejected"]), "stored": proc.stats.stored}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller run (about a minute)")
    args = ap.parse_args()
    devices, seconds = (40, 6.0) if args.quick else (100, 20.0)
    tune_gc_for_ingest()
    tmp = Path(tempfile.mkdtemp(prefix="iotguard-bench-overload-"))
    os.environ.setdefault("IOTGUARD_DEVICE_SECRET", str(tmp / "device.secret"))
    cfg = HubConfig(data_dir=str(tmp / "hub"), quota_device_rate=QUOTA_RATE, quota_device_burst=QUOTA_RATE)
    Path(cfg.data_dir).mkdir(parents=True)
    core = build_hub_services(cfg)
    results: dict[str, dict[str, object]] = {}
    for j, run in enumerate(("unloaded", "flood", "flood_no_quota")):
        sealers = enroll_devices(core, tmp / run, devices + 1, "chacha20-poly1305", prefix=f"ov{j}")
        normal = _schedule(sealers[:-1], NORMAL_RATE, seconds, 0.0)
        flood = [] if run == "unloaded" else _schedule(sealers[-1:], QUOTA_RATE * FLOOD_FACTOR, seconds, 0.5)
        run_cfg = cfg if run != "flood_no_quota" else replace(cfg, quota_device_rate=0.0)
        proc = IngestProcessor(core.lifecycle.store, core.lifecycle, run_cfg,
                               authorizer=core.posture.authorize_reading, audit=core.audit.log,
                               admission=admission_from_config(run_cfg))
        for s in sealers:
            core.lifecycle.session(s.device_id, 1)  # a running hub has its device cache warm
        results[run] = _run(proc, normal, flood, cfg.batch_max_messages)
        print(f"{run:>15}: {results[run]}", flush=True)
    ratio = float(results["flood"]["p99_ms"]) / max(0.01, float(results["unloaded"]["p99_ms"]))  # type: ignore[arg-type]
    ratio_off = float(results["flood_no_quota"]["p99_ms"]) / max(0.01, float(results["unloaded"]["p99_ms"]))  # type: ignore[arg-type]
    out = {
        "benchmark": "overload",
        "headline": {"name": "p99 ingest latency of the other devices, one device flooding at 100x its quota, "
                             "over the unloaded run", "unit": "ratio", "value": round(ratio, 2), "goal": 2.0},
        "ratio_without_quotas": round(ratio_off, 2),
        "devices": devices, "seconds": seconds, "quota_per_device_per_s": QUOTA_RATE,
        "normal_rate_per_device_per_s": NORMAL_RATE, "flood_rate_per_s": QUOTA_RATE * FLOOD_FACTOR,
        "runs": results, "quick": args.quick, "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    (ROOT / "bench" / "results" / "overload.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\np99 of the others under a 100x flood / unloaded: {ratio:.2f} (goal <= 2); "
          f"with quotas off: {ratio_off:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
