"""``iotguard backup DIR`` and ``iotguard restore DIR``: the hub's state, without key material."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from iotguard.cli._common import add_config_argument, config_from_args, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backup", help="back up the hub's database and audit log (key material is never copied)")
    add_config_argument(p)
    p.add_argument("directory", help="new or empty directory to write the backup into")
    p.set_defaults(func=_backup)
    r = sub.add_parser("restore", help="restore a backup (hub stopped); verifies the audit log")
    add_config_argument(r)
    r.add_argument("directory", help="a directory written by iotguard backup")
    r.add_argument("--replace", action="store_true", help="overwrite the existing database")
    r.set_defaults(func=_restore)


def _backup(args: argparse.Namespace) -> int:
    from iotguard.hub.backup import create_backup

    manifest = create_backup(config_from_args(args).hub, Path(args.directory), now=datetime.now(tz=UTC))
    print_json({"directory": args.directory, "database": manifest.database, "files": manifest.files,
                "key_labels": manifest.keystore["labels"]})
    return 0


def _restore(args: argparse.Namespace) -> int:
    from iotguard.hub.backup import restore_backup

    report = restore_backup(config_from_args(args).hub, Path(args.directory), now=datetime.now(tz=UTC),
                            replace=args.replace)
    print_json(report.to_dict())
    return 0
