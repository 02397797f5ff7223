"""``iotguard`` command line.

Each command group lives in its own module under ``iotguard.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (taking the
parsed ``argparse.Namespace`` and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from iotguard import __version__
from iotguard.errors import IotGuardError

__all__ = ["build_parser", "main"]

# Command modules, in the order ``iotguard --help`` lists them.
_COMMAND_MODULES: tuple[str, ...] = (
    "iotguard.cli.demo",
    "iotguard.cli.hub",
    "iotguard.cli.agent",
    "iotguard.cli.devices",
    "iotguard.cli.attest",
    "iotguard.cli.telemetry",
    "iotguard.cli.tokens",
    "iotguard.cli.credentials",
    "iotguard.cli.broker",
    "iotguard.cli.policy",
    "iotguard.cli.privacy",
    "iotguard.cli.analytics",
    "iotguard.cli.aggregate",
    "iotguard.cli.media",
    "iotguard.cli.puf",
    "iotguard.cli.firmware",
    "iotguard.cli.audit",
    "iotguard.cli.custody",
    "iotguard.cli.detect",
    "iotguard.cli.alerts",
    "iotguard.cli.models",
    "iotguard.cli.learn",
    "iotguard.cli.rollout",
    "iotguard.cli.sensor",
    "iotguard.cli.compliance",
    "iotguard.cli.console",
    "iotguard.cli.backup",
    "iotguard.cli.sim",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser."""
    parser = argparse.ArgumentParser(
        prog="iotguard",
        description="IoT security and privacy platform: hub, device agent, fleet simulator and tools.",
    )
    parser.add_argument("--version", action="version", version=f"iotguard {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="json: one JSON object per log line, with the request id of hub API requests")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iotguard`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_format == "json":
        from iotguard.hub.request_log import configure_json_logging

        configure_json_logging(level)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except IotGuardError as exc:
        print(f"iotguard: error [{exc.code}]: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
