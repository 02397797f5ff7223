"""``iotguard broker``: the embedded MQTT broker as its own process."""

from __future__ import annotations

import argparse
import signal
import threading


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="run the embedded MQTT broker on its own")
    s = p.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    serve = s.add_parser("serve", help="UNSAFE test tool: the embedded (amqtt) broker alone, plain MQTT, no "
                                       "device authentication (the hub runs it with mTLS itself)")
    serve.add_argument("--bind", default="127.0.0.1:1883", help="host:port (loopback only; default %(default)s)")
    serve.add_argument("--unsafe-plaintext", action="store_true", required=True,
                       help="required: acknowledge plain MQTT without TLS or device authentication")
    serve.add_argument("--unsafe-public", action="store_true",
                       help="UNSAFE: allow a non-loopback bind")
    serve.set_defaults(func=serve_broker)
    from iotguard.cli.broker_config import add_config_command

    add_config_command(s)


def serve_broker(args: argparse.Namespace) -> int:
    from iotguard.hub.broker import EmbeddedBroker

    broker = EmbeddedBroker(args.bind, unsafe_public=args.unsafe_public, unsafe_plaintext=args.unsafe_plaintext)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    broker.start()
    print(f"iotguard embedded broker on {broker.address.url}", flush=True)
    stop.wait()
    broker.stop()
    return 0
