"""``iotguard analytics``: central-DP queries and a data subject's privacy-loss ledger.

``query`` answers one structured query over the hub database's readings and
charges every subject it reads (``central``); ``budget SUBJECT`` shows the
subject's ledger per period (local DP from receipts, central, federated).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from iotguard.cli._common import config_from_args, print_json


def _service(args: argparse.Namespace) -> Any:
    from iotguard.cli.privacy import _engine
    from iotguard.clock import SystemClock
    from iotguard.hub.compose import build_analytics
    from iotguard.hub.outbox import SqlOutboxStore
    from iotguard.hub.services.audit import OutboxAuditSink
    from iotguard.hub.services.lifecycle import open_hub_keys
    from iotguard.hub.store import HubStore
    from iotguard.hub.stores.data_keys import SubjectKeyring

    cfg = config_from_args(args).hub
    engine = _engine(args)
    clock = SystemClock()
    store = HubStore(engine, cipher=SubjectKeyring(engine, open_hub_keys(cfg)))  # readings are sealed (ADR 0405)
    return engine, build_analytics(cfg, store, OutboxAuditSink(SqlOutboxStore(engine), clock), clock)


def _budget(args: argparse.Namespace) -> int:
    _, analytics = _service(args)
    doc = analytics.budget(args.subject)
    if args.json:
        print_json(doc)
        return 0
    print(f"subject {args.subject}: budget epsilon {doc['budget_epsilon']:g} per {doc['period_s']} s "
          f"({doc['composition']}); remaining now {doc['remaining_now']:g}")
    if not doc["periods"]:
        print("  no privacy loss recorded")
    for r in doc["periods"]:
        print(f"  period {r['period']:>8}  local {r['local']:g}  central {r['central']:g}  "
              f"federated {r['federated']:g}  total {r['total']:g}")
    sys.stdout.flush()
    return 0


def _query(args: argparse.Namespace) -> int:
    from iotguard.analytics.query import parse_query
    from iotguard.cli.privacy import _deliver

    doc: dict[str, Any] = {"statistic": args.statistic, "field": args.field, "epsilon": args.epsilon,
                           "max_per_subject": args.per_subject, "purpose": args.purpose}
    if args.lo is not None:
        doc["lo"] = args.lo
    if args.hi is not None:
        doc["hi"] = args.hi
    if args.category:
        doc["categories"] = args.category
    if args.statistic == "quantile":
        doc["alpha"] = args.alpha
        doc["candidates"] = args.candidates
    if args.group_by:
        doc["group_by"] = args.group_by
        doc["groups"] = args.group or []
    engine, analytics = _service(args)
    try:
        answer = analytics.query(parse_query(doc), actor="cli")
    finally:
        _deliver(engine)  # the query's audit event, answered or refused
    if args.json:
        print_json(answer)
    else:
        print(json.dumps(answer, sort_keys=True, default=str))
    return 0


def register(sub: Any) -> None:
    """Add ``analytics`` to the ``iotguard`` parser."""
    from iotguard.analytics.central import STATISTICS
    from iotguard.cli.privacy import _db_args

    p = sub.add_parser("analytics", help="private analytics: central-DP queries and each subject's privacy ledger")
    asub = p.add_subparsers(dest="analytics_command", metavar="SUBCOMMAND", required=True)
    b = asub.add_parser("budget", help="a data subject's privacy loss per period: local DP, central, federated")
    b.add_argument("subject", help="data subject id (or the id of a device linked to no subject)")
    b.add_argument("--json", action="store_true")
    _db_args(b)
    b.set_defaults(func=_budget)
    q = asub.add_parser("query", help="a differentially private statistic over stored readings "
                                      "(charges every subject read; refused when a budget would be exceeded)")
    q.add_argument("statistic", choices=STATISTICS)
    q.add_argument("field", help="reading field to read")
    q.add_argument("--epsilon", type=float, required=True, help="privacy loss charged to every subject read")
    q.add_argument("--purpose", required=True, help="why (recorded in the ledger's audit event)")
    q.add_argument("--lo", type=float, help="lower clamping bound (sum, mean, quantile)")
    q.add_argument("--hi", type=float, help="upper clamping bound (sum, mean, quantile)")
    q.add_argument("--per-subject", type=int, default=1, help="rows kept per subject (contribution bound)")
    q.add_argument("--category", action="append", help="histogram category (repeat)")
    q.add_argument("--alpha", type=float, default=0.5, help="quantile (0.5: median)")
    q.add_argument("--candidates", type=int, default=101, help="quantile candidates over [lo, hi]")
    q.add_argument("--group-by", help="reading field to group by (text)")
    q.add_argument("--group", action="append", help="a group to answer for (repeat; groups are declared, "
                                                    "never read from the data)")
    q.add_argument("--json", action="store_true")
    _db_args(q)
    q.set_defaults(func=_query)
