"""``iotguard sim soak``: simulated devices against a real hub on Mosquitto + PostgreSQL, measured."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim", help="fleet simulations against real hub processes")
    ssub = p.add_subparsers(dest="sim_command", metavar="SIMULATION", required=True)
    s = ssub.add_parser(
        "soak", help="N light devices for M minutes against a throwaway hub on Mosquitto + PostgreSQL",
        description="Starts its own PostgreSQL, Mosquitto (production mTLS configuration) and `iotguard hub` "
                    "process on 127.0.0.1, registers the devices, sends for the given minutes and prints JSON: "
                    "devices, minutes, sent, stored, lost, duplicated, latency percentiles, memory_growth after "
                    "the declared warm-up (the first 20%% of the minutes), and the hub's RSS and open file "
                    "descriptors over time. Exit status 1 when a reading was lost or duplicated.")
    s.add_argument("--devices", type=int, default=10_000, help="simulated devices (default 10000)")
    s.add_argument("--minutes", type=float, default=10.0, help="minutes of sending (default 10)")
    s.add_argument("--interval", type=float, default=10.0, help="seconds between a device's readings (default 10)")
    s.add_argument("--connections", type=int, default=4, help="MQTT connections the devices share (default 4)")
    s.add_argument("--out", metavar="PATH", help="also write the JSON report here")
    s.set_defaults(func=_soak)


def _soak(args: argparse.Namespace) -> int:
    from iotguard.sim.soak import SoakSettings, run_soak, write_report

    settings = SoakSettings(devices=args.devices, minutes=args.minutes, interval_s=args.interval,
                            connections=args.connections)
    report = run_soak(settings, progress=lambda m: print(f"soak: {m}", file=sys.stderr, flush=True))
    if args.out:
        write_report(report, Path(args.out))
    print(json.dumps(report, indent=2))
    return 0 if report["lost"] == 0 and report["duplicated"] == 0 else 1
