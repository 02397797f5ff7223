"""``iotguard console``: the web console's device-owner access codes."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from iotguard.cli._common import add_config_argument, config_from_args, deliver_effects, open_hub_services

if TYPE_CHECKING:
    from iotguard.hub.compose import HubServices
    from iotguard.hub.console import ConsoleAuth


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("console", help="the web console at https://<api_bind>/console/ (owner access codes)")
    add_config_argument(p)
    s = p.add_subparsers(dest="console_command", metavar="ACTION", required=True)
    c = s.add_parser("owner-code", help="issue a data subject's access code to the owner portal (printed once, "
                                        "valid 30 days, audited)")
    c.add_argument("subject_id", help="the data subject")
    c.add_argument("--actor", default="privacy-officer", help="who issues it (recorded in the audit log)")
    c.set_defaults(func=owner_code)
    r = s.add_parser("owner-revoke", help="revoke every access code of a data subject and end their sessions")
    r.add_argument("subject_id")
    r.set_defaults(func=owner_revoke)


def _auth(args: argparse.Namespace) -> tuple[ConsoleAuth, HubServices]:
    # Imported here: every ``iotguard`` command (an agent too) builds this parser, and the hub is heavy.
    from iotguard.hub.console import ConsoleAuth, SqlConsoleSessionStore

    services = open_hub_services(config_from_args(args).hub)
    auth = ConsoleAuth(SqlConsoleSessionStore(services.store.engine), services.operators, services.store,
                       services.plane, services.operators.audit, services.clock)
    return auth, services


def owner_code(args: argparse.Namespace) -> int:
    auth, services = _auth(args)
    print(auth.issue_owner_token(args.subject_id, actor=args.actor))
    deliver_effects(services)
    return 0


def owner_revoke(args: argparse.Namespace) -> int:
    auth, _services = _auth(args)
    print(auth.end_owner_access(args.subject_id))
    return 0
