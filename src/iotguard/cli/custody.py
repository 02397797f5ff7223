"""``iotguard custody ...``: each party's key, signed custody statements, and logging them at the hub.

``keygen`` and ``sign`` run at the party (manufacturer, distributor,
installer, operator) with its own key store; ``record`` runs at the hub and
logs a statement after verifying it against the trusted parties
(``hub.custody_parties_file``). ``iotguard devices provenance`` then shows
and verifies the chain.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotguard.audit.custody import CustodyRole, CustodyStatement, sign_custody_statement
from iotguard.errors import ConfigError
from iotguard.keys.keystore import KeyKind
from iotguard.keys.software import SoftwareKeyStore

__all__ = ["register"]


def _cmd_keygen(args: argparse.Namespace) -> int:
    keys = SoftwareKeyStore(args.keys)
    if not keys.has_key(args.label):
        keys.generate(args.label, KeyKind.ED25519)
    public_key = base64.b64encode(keys.public_key(args.label)).decode()
    entry = {"name": args.party, "role": args.role, "public_key": public_key}
    print(json.dumps(entry))
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    keys = SoftwareKeyStore(args.keys)
    if not keys.has_key(args.label):
        raise ConfigError(f"no key {args.label!r}; run 'iotguard custody keygen' first")
    device_key = base64.b64decode(args.device_key, validate=True)
    previous = hashlib.sha256(Path(args.previous).read_bytes()).digest() if args.previous else None
    statement = CustodyStatement(
        args.device, hashlib.sha256(device_key).digest(), args.party, CustodyRole(args.role),
        args.next, datetime.now(tz=UTC), previous,
    )
    Path(args.output).write_bytes(sign_custody_statement(statement, keys, args.label))
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from iotguard.cli._common import config_from_args, open_hub_services
    from iotguard.hub.custody_gate import CustodyGate, load_custody_parties

    hub = config_from_args(args).hub
    parties = args.parties or hub.custody_parties_file
    if not parties:
        raise ConfigError("no trusted parties: pass --parties or set hub.custody_parties_file")
    gate = CustodyGate(open_hub_services(hub).audit.log, load_custody_parties(parties))
    for path in args.statement:
        st = gate.record(Path(path).read_bytes())
        print(json.dumps({"device": st.device_id, "party": st.party, "role": st.role.value, "next": st.next_party}))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``custody`` command group."""
    custody = subparsers.add_parser("custody", help="chain of custody signed by each party that handles a device")
    sub = custody.add_subparsers(dest="custody_command", metavar="ACTION", required=True)
    roles = [r.value for r in CustodyRole]

    p = sub.add_parser("keygen", help="create this party's signing key; print its trusted-party entry (JSON)")
    p.add_argument("--keys", required=True, metavar="DIR", help="this party's own key store")
    p.add_argument("--label", default="custody")
    p.add_argument("--party", required=True, help="party name, e.g. acme-factory")
    p.add_argument("--role", required=True, choices=roles)
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("sign", help="sign a custody-transfer statement (COSE_Sign1) for a device")
    p.add_argument("--keys", required=True, metavar="DIR")
    p.add_argument("--label", default="custody")
    p.add_argument("--party", required=True)
    p.add_argument("--role", required=True, choices=roles)
    p.add_argument("--device", required=True, help="device id")
    p.add_argument("--device-key", required=True, help="device identity public key (base64)")
    p.add_argument("--next", help="party the device is handed to (omit for the operator's final statement)")
    p.add_argument("--previous", metavar="FILE", help="the previous party's statement")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_cmd_sign)

    p = sub.add_parser("record", help="verify statements against the trusted parties and log them (hub)")
    p.add_argument("statement", nargs="+", metavar="FILE")
    p.add_argument("--config", metavar="PATH")
    p.add_argument("--parties", metavar="FILE", help="trusted parties JSON (default hub.custody_parties_file)")
    p.set_defaults(func=_cmd_record)
