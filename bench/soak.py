"""Soak: N simulated devices for M minutes against a real ``iotguard hub`` on Mosquitto (mTLS) + PostgreSQL.

The engine is ``iotguard.sim.soak`` (also ``iotguard sim soak``); this script
runs it and writes ``bench/results/soak.json`` with the headline (memory
growth after the warm-up declared in the code: the first 20 % of the minutes).
See that module's docstring for what is measured and how.

Usage: python bench/soak.py [--quick] [--devices N] [--minutes M] [--interval S] [--connections K] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from iotguard.sim.soak import SoakSettings, run_soak, write_report  # noqa: E402


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
    report = run_soak(SoakSettings(devices=args.devices, minutes=args.minutes, interval_s=args.interval,
                                   connections=args.connections),
                      progress=lambda m: print(f"soak: {m}", flush=True))
    out = {"benchmark": "soak",
           "headline": {"name": "hub memory growth after the declared warm-up (lost and duplicated must be 0)",
                        "unit": "fraction", "value": report["memory_growth"], "goal": 0.05},
           **report, "quick": args.quick}
    write_report(out, Path(args.out))
    print(json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=2))
    return 0 if report["lost"] == 0 and report["duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
