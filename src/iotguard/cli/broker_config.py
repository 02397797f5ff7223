"""``iotguard broker config``: write a production Mosquitto configuration.

The ``broker`` command group lives in :mod:`iotguard.cli.broker`; it adds
this action with :func:`add_config_command`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from iotguard.cli._common import add_config_argument, config_from_args
from iotguard.errors import ConfigError

__all__ = ["add_config_command", "broker_config"]


def add_config_command(broker_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config`` to the ``iotguard broker`` actions."""
    p = broker_subparsers.add_parser(
        "config", help="write a Mosquitto configuration: device mTLS from the fleet CA, CRL, per-device ACLs")
    add_config_argument(p)
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (created 0700)")
    p.add_argument("--hostname", required=True, help="name or address devices connect to (server certificate)")
    p.add_argument("--port", type=int, default=8883, help="TLS listener port (default %(default)s)")
    p.add_argument("--bind", default=None, help="listener address (default: all interfaces)")
    p.add_argument("--user", default="mosquitto",
                   help="user Mosquitto drops to when started as root; files are chowned to it (default %(default)s)")
    p.add_argument("--access-only", action="store_true",
                   help="only rewrite the CRL and the ACL (after a revocation), then reload with --pid-file")
    p.add_argument("--pid-file", default=None, metavar="PATH",
                   help="send SIGHUP to the broker whose pid is in PATH after writing")
    p.set_defaults(func=broker_config)


def broker_config(args: argparse.Namespace) -> int:
    """Write the configuration (or only the access files) and optionally reload the broker."""
    from iotguard.hub.mosquitto import reload, update_access_files, write_broker_config

    cfg = config_from_args(args).hub
    if not Path(cfg.data_dir).is_dir():
        raise ConfigError(f"hub data directory {cfg.data_dir!r} does not exist; start the hub once first")
    from iotguard.hub.compose import build_hub_services

    services = build_hub_services(cfg)  # the ACL comes from the active Cedar policies and the posture
    store, ca, acl = services.store, services.lifecycle.ca, services.posture.broker_acl
    now = datetime.now(tz=UTC)
    if args.access_only:
        files = update_access_files(args.out, ca, store, now, run_as_user=args.user, acl_renderer=acl)
        print(f"rewrote {files.crlfile} and {files.acl}")
    else:
        files = write_broker_config(args.out, ca, store, args.hostname, args.port, now,
                                    bind_address=args.bind, run_as_user=args.user, acl_renderer=acl)
        print(f"wrote {files.conf}")
        print(f"run: mosquitto -c {files.conf}")
        print(f"hub client certificate: {files.hub_certfile} (key {files.hub_keyfile}, mode 0600)")
    if args.pid_file:
        pid = reload(args.pid_file)
        print(f"sent SIGHUP to broker process {pid}")
    return 0
