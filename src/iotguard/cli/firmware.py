"""``iotguard firmware``: offline TUF keys for firmware releases."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from iotguard.cli._common import print_json
from iotguard.cli.firmware_keys import init_offline_keys
from iotguard.errors import ConfigError

__all__ = ["PASSPHRASE_ENV", "register"]

#: Environment variable holding the offline keys' passphrase (else it is prompted for).
PASSPHRASE_ENV = "IOTGUARD_FIRMWARE_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``iotguard firmware`` and its subcommands."""
    parser = subparsers.add_parser("firmware", help="secure firmware updates (TUF): offline keys")
    sub = parser.add_subparsers(dest="firmware_command", metavar="SUBCOMMAND", required=True)
    keys = sub.add_parser("keys", help="offline root and targets keys (kept outside the hub)")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    init = keys_sub.add_parser(
        "init",
        help="create root keys (threshold signing) and a targets key in DIR, encrypted with a passphrase "
        f"(from ${PASSPHRASE_ENV} or prompted)",
    )
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--root-keys", type=int, default=3, help="number of root keys (default 3)")
    init.add_argument("--threshold", type=int, default=2, help="root signatures required (default 2)")
    init.set_defaults(func=_keys_init)


def _passphrase() -> bytes:
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        value = getpass.getpass("offline key passphrase: ")
        if getpass.getpass("again: ") != value:
            raise ConfigError("passphrases differ")
    return value.encode()


def _keys_init(args: argparse.Namespace) -> int:
    description = init_offline_keys(
        args.directory, root_keys=args.root_keys, threshold=args.threshold, passphrase=_passphrase(),
    )
    print_json({"directory": str(args.directory), **description})
    return 0
