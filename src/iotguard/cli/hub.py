"""``iotguard hub``: run the hub (ingest, API, and the embedded broker unless one is configured)."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import threading

from iotguard.cli._common import add_config_argument, config_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hub", help="run the hub: MQTT ingest, REST API, embedded broker if no broker URL",
                       description="Run a hub process until interrupted. Settings come from [hub] in the "
                       "config file and IOTGUARD_HUB__* environment variables.")
    add_config_argument(p)
    p.add_argument("--api-bind", help="host:port of the REST API (overrides hub.api_bind)")
    p.add_argument("--database-url", help="SQLAlchemy URL (overrides hub.database_url)")
    p.add_argument("--broker-url", help="mqtts://host:port of an external broker, mTLS with the hub's client "
                   "certificate (overrides hub.broker_url)")
    p.add_argument("--data-dir", help="hub data directory (overrides hub.data_dir)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iotguard.hub.service import Hub

    cfg = config_from_args(args).hub
    for name in ("api_bind", "database_url", "broker_url", "data_dir"):
        value = getattr(args, name)
        if value:
            setattr(cfg, name, value)
    clock = None
    if cfg.unsafe_clock_offset_file:
        from iotguard.clock import OffsetFileClock

        print(f"UNSAFE: the hub's clock is moved by the offset in {cfg.unsafe_clock_offset_file} "
              "(hub.unsafe_clock_offset_file, fault injection only)", flush=True)
        clock = OffsetFileClock(cfg.unsafe_clock_offset_file)
    hub = Hub(cfg, clock=clock)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # ``kill -USR1 PID`` writes every thread's stack to stderr (code locations only, no data): how an
    # operator, or a failing end-to-end test, sees where a hub that stopped making progress waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    hub.start()
    print(f"iotguard hub: API {hub.api_url}  broker {hub.broker_address.url}"
          f"{' (embedded)' if hub.embedded_broker else ''}  CA {hub.lifecycle.ca.fingerprint[:16]}", flush=True)
    from iotguard.hub.credentials import ensure_bootstrap

    secret = ensure_bootstrap(hub.store, hub.services.clock.now())
    if secret is not None:
        # Printed once, to the operator's terminal only; only its hash is stored.
        print("no operator exists yet. One-time bootstrap token (valid 24 h), redeem it with\n"
              f"  curl --cacert {hub.ca_file} -X POST {hub.api_url}/v1/bootstrap "
              "-H 'content-type: application/json' "
              f"-d '{{\"bootstrap_token\": \"{secret}\", \"name\": \"YOUR NAME\"}}'\n"
              f"or create tokens on this host with 'iotguard tokens create'.", flush=True)
    stop.wait()
    hub.stop()
    return 0
