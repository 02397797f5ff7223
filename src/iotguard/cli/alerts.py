"""``iotguard alerts``: detection alerts and the response actions they caused (on the hub host)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from iotguard.cli._common import add_config_argument, config_from_args, deliver_effects, open_hub_services, print_json

if TYPE_CHECKING:
    from iotguard.hub.compose import HubServices

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("alerts", help="list, show and acknowledge detection alerts; approve waiting actions")
    add_config_argument(p)
    s = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    ls = s.add_parser("ls", help="list alerts, newest first")
    ls.add_argument("--device", help="only this device's alerts")
    ls.add_argument("--unacked", action="store_true", help="only alerts nobody acknowledged")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(func=_ls)
    sh = s.add_parser("show", help="one alert with its evidence and the actions it caused")
    sh.add_argument("alert_id")
    sh.set_defaults(func=_show)
    ack = s.add_parser("ack", help="acknowledge an alert (audited)")
    ack.add_argument("alert_id")
    ack.add_argument("--actor", default="cli", help="who acknowledges (recorded in the audit log)")
    ack.set_defaults(func=_ack)
    ap = s.add_parser("approve", help="carry out a response action waiting for approval (audited)")
    ap.add_argument("action_id", type=int)
    ap.add_argument("--actor", default="cli", help="who approves (recorded in the audit log)")
    ap.set_defaults(func=_approve)


def _open(args: argparse.Namespace) -> HubServices:
    return open_hub_services(config_from_args(args).hub)


def _ls(args: argparse.Namespace) -> int:
    rows = [a.to_dict() for a in _open(args).detection.alerts(device_id=args.device, unacked=args.unacked,
                                                                limit=args.limit)]
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        state = f"acked by {r['acked_by']}" if r["acked_by"] else "open"
        print(f"{r['alert_id'][:16]}  {r['raised_at']}  {r['device']:<20} {r['detector']:<18} "
              f"{r['severity']:<8} {r['score']:>8.2f}  {state}")
    return 0


def _show(args: argparse.Namespace) -> int:
    alert, actions = _open(args).detection.alert(args.alert_id)
    print_json({**alert.to_dict(), "actions": [a.to_dict() for a in actions]})
    return 0


def _ack(args: argparse.Namespace) -> int:
    services = _open(args)
    services.detection.ack(args.alert_id, args.actor)
    deliver_effects(services)
    print(f"alert {args.alert_id[:16]} acknowledged")
    return 0


def _approve(args: argparse.Namespace) -> int:
    services = _open(args)
    done = services.detection.approve(args.action_id, args.actor)
    deliver_effects(services)
    print(f"action {args.action_id} ({done.kind} on {done.device_id}): {done.outcome}")
    return 0 if done.outcome == "done" else 1
