"""``iotguard sensor``: stream a Zeek log directory's (or a pcap's) flows to the hub as a device."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from iotguard.cli._common import add_config_argument, config_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sensor", help="stream flows from a Zeek log directory or a pcap to the hub",
                       description="Run a network sensor. It is enrolled like a device: add it with "
                       "'iotguard devices add SENSOR_ID --model iotguard-sensor' (only that model may report "
                       "flows), then pass --enroll CODE on the first run. It follows <zeek-dir>/conn.log across "
                       "rotation and sends its flows as signed report_flows requests; --pcap sends one "
                       "capture's flows and exits.")
    add_config_argument(p)
    p.add_argument("--device-id", required=True, help="the sensor's device id")
    p.add_argument("--enroll", metavar="CODE", help="one-time enrollment code (first run)")
    p.add_argument("--data-dir", help="sensor state directory (overrides agent.data_dir)")
    p.add_argument("--hub-url", help="hub API URL (overrides agent.hub_url)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--zeek-dir", metavar="DIR", help="Zeek log directory (follows conn.log)")
    source.add_argument("--pcap", metavar="FILE", help="pcap or pcapng capture (sent once)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between polls of the log (default 0.5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iotguard.agent import Agent
    from iotguard.cli.detect import _read
    from iotguard.detection import FlowBatch, PcapLimits, flows_from_pcap
    from iotguard.sensor import FlowSender, ZeekTail, load_position, run_sensor

    cfg = config_from_args(args).agent
    if args.data_dir:
        cfg.data_dir = args.data_dir
    if args.hub_url:
        cfg.hub_url = args.hub_url
    agent = Agent(cfg, args.device_id)
    if not agent.enrolled:
        if not args.enroll:
            print("iotguard sensor: the sensor is not enrolled; pass --enroll CODE", flush=True)
            return 2
        agent.enroll(args.enroll)
        print(f"enrolled sensor {args.device_id}", flush=True)
    sender = FlowSender(lambda report: agent.signed_request("report_flows", "/v1/flows", {"flows": report}))
    if args.pcap:
        result = flows_from_pcap(_read(args.pcap, PcapLimits().max_bytes))
        if result.flows:
            sender.send(FlowBatch.from_flows(result.flows))
        print(f"sent {sender.sent_flows} flows from {result.packets} packets ({sender.alerts} alerts raised, "
              f"{sender.dropped_reports} reports refused)", flush=True)
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    data_dir = Path(cfg.data_dir)
    tail = ZeekTail(Path(args.zeek_dir), start=load_position(data_dir))
    print(f"sensor {args.device_id} following {tail.path}", flush=True)
    try:
        run_sensor(tail, sender, data_dir, stop, interval_s=args.interval)
    finally:
        tail.close()
    print(f"sent {sender.sent_flows} flows ({sender.alerts} alerts raised, {sender.dropped_reports} reports "
          f"refused, lines skipped: {dict(tail.skipped)})", flush=True)
    return 0
