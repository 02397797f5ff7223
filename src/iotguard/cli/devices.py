"""``iotguard devices``: the device registry (on the hub host)."""

from __future__ import annotations

import argparse
from pathlib import Path

from iotguard.cli._common import add_config_argument, config_from_args, print_json
from iotguard.hub.registry import FleetRegistry, open_hub_keys
from iotguard.hub.store import HubStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("devices", help="add, list, show and revoke devices")
    add_config_argument(p)
    s = p.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    a = s.add_parser("add", help="register a device and print its one-time enrollment code")
    a.add_argument("device_id")
    a.add_argument("--model", required=True, help="device model, e.g. thermo-1")
    a.add_argument("--segment", default="default", help="network segment (default: default)")
    a.add_argument("--serial", help="manufacturer serial number")
    a.set_defaults(func=add)
    ls = s.add_parser("ls", help="list devices")
    ls.add_argument("--status", choices=["pending", "active", "revoked", "decommissioned"])
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(func=list_devices)
    sh = s.add_parser("show", help="show one device with its certificate")
    sh.add_argument("device_id")
    sh.set_defaults(func=show)
    r = s.add_parser("revoke", help="revoke a device: its data is refused from now on")
    r.add_argument("device_id")
    r.set_defaults(func=revoke)


def _open(args: argparse.Namespace) -> tuple[HubStore, FleetRegistry]:
    cfg = config_from_args(args).hub
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    store = HubStore.open(cfg.resolved_database_url())
    return store, FleetRegistry(store, open_hub_keys(cfg), cfg)


def add(args: argparse.Namespace) -> int:
    _store, registry = _open(args)
    code = registry.add_device(args.device_id, args.model, segment=args.segment, serial=args.serial)
    print(f"device {args.device_id} registered; enrollment code (shown once, valid "
          f"{registry.cfg.enrollment_token_ttl_s // 3600} h):")
    print(code)
    return 0


def list_devices(args: argparse.Namespace) -> int:
    store, _ = _open(args)
    devices = store.list_devices(status=args.status)
    if args.json:
        print_json([d.to_dict() for d in devices])
        return 0
    print(f"{'DEVICE':<32} {'MODEL':<12} {'SEGMENT':<12} {'STATUS':<10} EPOCH")
    for d in devices:
        print(f"{d.device_id:<32} {d.model:<12} {d.segment:<12} {d.status:<10} {d.current_epoch or '-'}")
    return 0


def show(args: argparse.Namespace) -> int:
    store, _ = _open(args)
    d = store.get_device(args.device_id)
    print_json({**d.to_dict(), "readings": store.reading_count(d.device_id), "certificate_pem": d.cert_pem})
    return 0


def revoke(args: argparse.Namespace) -> int:
    _, registry = _open(args)
    registry.revoke(args.device_id)
    print(f"device {args.device_id} revoked")
    return 0
