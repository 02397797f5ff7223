"""``iotguard`` command line.

Each command group lives in its own module under ``iotguard.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (taking the
parsed ``argparse.Namespace`` and returning an exit code). A command line that
names a command imports only that command's module (``_COMMANDS``): every agent,
sensor and operator command starts without importing the whole hub.
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

#: Which module registers each top-level command, in ``--help`` order (tests/test_cli_main.py checks it
#: against what each module's ``register`` adds).
_COMMANDS: dict[str, str] = {
    "demo": "iotguard.cli.demo", "hub": "iotguard.cli.hub", "agent": "iotguard.cli.agent",
    "devices": "iotguard.cli.devices", "attest": "iotguard.cli.attest", "endorsement-key": "iotguard.cli.attest",
    "tpm-ek": "iotguard.cli.attest", "reference-values": "iotguard.cli.attest",
    "attestation-policy": "iotguard.cli.attest", "telemetry": "iotguard.cli.telemetry",
    "tokens": "iotguard.cli.tokens", "credentials": "iotguard.cli.credentials", "broker": "iotguard.cli.broker",
    "policy": "iotguard.cli.policy", "privacy": "iotguard.cli.privacy", "export": "iotguard.cli.privacy",
    "analytics": "iotguard.cli.analytics", "aggregate": "iotguard.cli.aggregate", "media": "iotguard.cli.media",
    "puf": "iotguard.cli.puf", "firmware": "iotguard.cli.firmware", "audit": "iotguard.cli.audit",
    "witness": "iotguard.cli.audit", "custody": "iotguard.cli.custody", "detect": "iotguard.cli.detect",
    "playbooks": "iotguard.cli.detect", "alerts": "iotguard.cli.alerts", "models": "iotguard.cli.models",
    "learn": "iotguard.cli.learn", "rollout": "iotguard.cli.rollout", "sensor": "iotguard.cli.sensor",
    "compliance": "iotguard.cli.compliance", "console": "iotguard.cli.console", "backup": "iotguard.cli.backup",
    "restore": "iotguard.cli.backup", "sim": "iotguard.cli.sim",
}
#: Command modules, in the order ``iotguard --help`` lists them.
_COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(_COMMANDS.values()))


def _command_of(argv: Sequence[str]) -> str | None:
    """The command an argument list names (its first positional argument), or ``None``."""
    args = iter(argv)
    for arg in args:
        if arg == "--log-format":
            next(args, None)
        elif arg in ("-h", "--help"):
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser: every command, or only ``command``'s module when it is a known command."""
    parser = argparse.ArgumentParser(
        prog="iotguard",
        description="IoT security and privacy platform: hub, device agent, fleet simulator and tools.",
    )
    parser.add_argument("--version", action="version", version=f"iotguard {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="json: one JSON object per log line, with the request id of hub API requests")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = (_COMMANDS[command],) if command in _COMMANDS else _COMMAND_MODULES
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iotguard`` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
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
