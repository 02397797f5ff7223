"""``iotguard analytics budget SUBJECT``: the privacy-loss ledger of a data subject."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from iotguard.cli._common import print_json


def _budget(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from iotguard.cli.privacy import _engine
    from iotguard.hub.stores.consent import subject_devices
    from iotguard.hub.stores.receipts import budget_ledger
    from iotguard.privacy.ledger import EPSILON_RESOLUTION

    engine = _engine(args)
    with engine.connect() as c:
        linked = [r[0] for r in c.execute(
            select(subject_devices.c.device_id).where(subject_devices.c.subject_id == args.subject))]
        ids = sorted(linked) or [args.subject]
        rows = c.execute(
            select(budget_ledger.c.device_id, budget_ledger.c.period, budget_ledger.c.spent_units,
                   budget_ledger.c.updated_at)
            .where(budget_ledger.c.device_id.in_(ids))
            .order_by(budget_ledger.c.device_id, budget_ledger.c.period)
        ).all()
    out: list[dict[str, Any]] = [
        {"id": d, "period": int(p), "epsilon_spent": round(int(u) * EPSILON_RESOLUTION, 6),
         "updated_at": t.isoformat()}
        for d, p, u, t in rows
    ]
    if args.json:
        print_json({"subject": args.subject, "ids": ids, "ledger": out})
        return 0
    print(f"subject {args.subject}: ledger ids {', '.join(ids)}")
    if not out:
        print("  no privacy loss recorded")
    for r in out:
        print(f"  {r['id']:<24} period {r['period']:>8}  epsilon spent {r['epsilon_spent']:g}")
    sys.stdout.flush()
    return 0


def register(sub: Any) -> None:
    """Add ``analytics`` to the ``iotguard`` parser."""
    from iotguard.cli.privacy import _db_args

    p = sub.add_parser("analytics", help="private analytics: the privacy-loss ledger of a data subject")
    asub = p.add_subparsers(dest="analytics_command", metavar="SUBCOMMAND", required=True)
    b = asub.add_parser("budget", help="privacy loss spent per budget period by a subject (its linked devices)")
    b.add_argument("subject", help="data subject id (or a device id)")
    b.add_argument("--json", action="store_true")
    _db_args(b)
    b.set_defaults(func=_budget)
