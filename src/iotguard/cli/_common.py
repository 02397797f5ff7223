"""Shared pieces of the command modules."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from iotguard.config import Config, HubConfig, load_config

if TYPE_CHECKING:
    from iotguard.hub.compose import HubServices

__all__ = ["add_config_argument", "config_from_args", "deliver_effects", "hub_services_for", "open_hub_services",
           "print_json"]

log = logging.getLogger(__name__)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH",
                        help="TOML config file (default ./iotguard.toml if present; env IOTGUARD_*__* overrides)")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def open_hub_services(cfg: HubConfig) -> HubServices:
    """The hub's services on the hub host, exactly as a hub process builds them."""
    from iotguard.hub.compose import build_hub_services

    return build_hub_services(cfg)


def deliver_effects(services: HubServices) -> int:
    """Deliver the side effects the command just committed (audit entries, broker CRL/ACL).

    Consent pushes need a broker connection and are left to a running hub.
    Whatever cannot be delivered now stays in the outbox for the next hub
    process to deliver.
    """
    delivered = services.drainer(worker=f"cli-{os.getpid()}").drain()
    left = services.outbox.pending(["audit.event", "broker.access"])
    if left:
        log.warning("%d side effect(s) not delivered yet; a running hub delivers them", left)
    return delivered


@contextmanager
def hub_services_for(args: argparse.Namespace) -> Iterator[HubServices]:
    """The hub's services for one command (``--config``), the database released afterwards."""
    services = open_hub_services(config_from_args(args).hub)
    try:
        yield services
    finally:
        services.store.engine.dispose()
