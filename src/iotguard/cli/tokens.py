"""``iotguard tokens``: operator API tokens."""

from __future__ import annotations

import argparse

from iotguard.cli._common import add_config_argument, config_from_args, print_json
from iotguard.clock import SystemClock
from iotguard.hub.store import ROLES, HubStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tokens", help="create, list and revoke operator API tokens")
    add_config_argument(p)
    s = p.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    c = s.add_parser("create", help="create a token (printed once, stored only as a hash)")
    c.add_argument("--name", required=True, help="who or what the token is for")
    c.add_argument("--role", required=True, choices=ROLES, help="operator role")
    c.set_defaults(func=create)
    ls = s.add_parser("ls", help="list tokens (never their secrets)")
    ls.set_defaults(func=list_tokens)
    r = s.add_parser("revoke", help="revoke a token by its id")
    r.add_argument("token_id")
    r.set_defaults(func=revoke)


def _store(args: argparse.Namespace) -> HubStore:
    return HubStore.open(config_from_args(args).hub.resolved_database_url())


def create(args: argparse.Namespace) -> int:
    secret = _store(args).create_api_token(args.name, args.role, now=SystemClock().now())
    print(secret)
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    print_json(_store(args).list_api_tokens())
    return 0


def revoke(args: argparse.Namespace) -> int:
    _store(args).revoke_api_token(args.token_id, now=SystemClock().now())
    return 0
