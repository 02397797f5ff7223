"""``iotguard telemetry``: read stored readings, bound to a purpose (ADR 0405)."""

from __future__ import annotations

import argparse
import getpass
import json
import time

from iotguard.cli._common import add_config_argument, config_from_args, deliver_effects, open_hub_services


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("telemetry", help="read stored telemetry")
    add_config_argument(p)
    s = p.add_subparsers(dest="telemetry_command", metavar="ACTION", required=True)
    t = s.add_parser("tail", help="print the latest readings the purpose allows (JSON lines); --follow keeps "
                     "printing")
    t.add_argument("--purpose", required=True, help="why: only readings collected for this purpose, of devices "
                   "whose contract declares it and whose subject consented (a Cedar decision, audit-logged)")
    t.add_argument("--role", default="operator", help="the operator role Cedar decides for (default operator)")
    t.add_argument("--device", help="only this device")
    t.add_argument("-n", "--lines", type=int, default=10, help="how many recent readings first (default 10)")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new readings")
    t.add_argument("--interval", type=float, default=1.0, help="poll interval with --follow (seconds)")
    t.set_defaults(func=tail)


def tail(args: argparse.Namespace) -> int:
    services = open_hub_services(config_from_args(args).hub)
    from iotguard.hub.services.data_access import Reader  # here: every command builds this parser

    reader = Reader(f"cli:{getpass.getuser()}", args.role, "cli")
    window = max(0, args.lines) * (1 if not args.device else 1000)
    after = max(0, services.store.last_reading_id() - window)
    while True:
        page = services.data_access.read_readings(reader, args.purpose, after=after, device_id=args.device,
                                                  limit=1000)
        deliver_effects(services)  # the access is in the audit log
        items = page["items"]
        if not args.follow and args.lines:
            items = items[-args.lines:]
        for item in items if (args.follow or args.lines) else []:
            print(json.dumps(item), flush=True)
        if not args.follow:
            return 0
        if page["next"] == after:
            time.sleep(args.interval)
        after = page["next"]
