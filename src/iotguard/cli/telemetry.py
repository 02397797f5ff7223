"""``iotguard telemetry``: read stored readings."""

from __future__ import annotations

import argparse
import json
import time

from iotguard.cli._common import add_config_argument, config_from_args
from iotguard.errors import IotGuardError
from iotguard.hub.store import HubStore
from iotguard.wire import decode_reading


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("telemetry", help="read stored telemetry")
    add_config_argument(p)
    s = p.add_subparsers(dest="telemetry_command", metavar="ACTION", required=True)
    t = s.add_parser("tail", help="print the latest readings (JSON lines); --follow keeps printing")
    t.add_argument("--device", help="only this device")
    t.add_argument("-n", "--lines", type=int, default=10, help="how many recent readings first (default 10)")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new readings")
    t.add_argument("--interval", type=float, default=1.0, help="poll interval with --follow (seconds)")
    t.set_defaults(func=tail)


def tail(args: argparse.Namespace) -> int:
    store = HubStore.open(config_from_args(args).hub.resolved_database_url())
    after = max(0, store.last_reading_id() - max(0, args.lines) * (1 if not args.device else 1000))
    rows = store.readings_after(after, device_id=args.device, limit=100_000)[-args.lines:] if args.lines else []
    while True:
        for r in rows:
            try:
                body = decode_reading(r.body).to_dict()
            except IotGuardError:
                body = {"undecodable": True}
            print(json.dumps({"id": r.id, "device_id": r.device_id, "seq": r.seq,
                              "received_at": r.received_at.isoformat(), **body}), flush=True)
            after = r.id
        if not args.follow:
            return 0
        time.sleep(args.interval)
        rows = store.readings_after(after, device_id=args.device, limit=1000)
