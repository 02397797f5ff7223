"""Shared pieces of the command modules."""

from __future__ import annotations

import argparse
import json
from typing import Any

from iotguard.config import Config, load_config

__all__ = ["add_config_argument", "config_from_args", "print_json"]


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH",
                        help="TOML config file (default ./iotguard.toml if present; env IOTGUARD_*__* overrides)")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))
