"""``iotguard credentials``: credential audit, renewals due, end-of-support dates."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from iotguard.cli._common import add_config_argument, config_from_args, print_json
from iotguard.clock import SystemClock
from iotguard.hub.store import HubStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("credentials", help="credential audit, certificates due for renewal, end-of-support dates")
    add_config_argument(p)
    s = p.add_subparsers(dest="credentials_command", metavar="ACTION", required=True)
    a = s.add_parser("audit", help="list credentials that are shared, weak, expired or unused")
    a.add_argument("--unused-days", type=int, default=30, help="API tokens unused this long are reported")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=audit)
    r = s.add_parser("renewals", help="device certificates that expire within --days")
    r.add_argument("--days", type=int, default=10)
    r.set_defaults(func=renewals)
    e = s.add_parser("eos", help="per-model end-of-support dates")
    es = e.add_subparsers(dest="eos_command", metavar="ACTION", required=True)
    st = es.add_parser("set", help="set a model's end-of-support date")
    st.add_argument("model")
    st.add_argument("date", help="YYYY-MM-DD (UTC)")
    st.set_defaults(func=eos_set)
    w = es.add_parser("warnings", help="models whose support ended or ends within --days, with their devices")
    w.add_argument("--days", type=int, default=90)
    w.set_defaults(func=eos_warnings)
    sh = es.add_parser("show", help="each model's end of support and disclosure contact from its newest signed "
                       "firmware release")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=eos_show)


def _store(args: argparse.Namespace) -> HubStore:
    return HubStore.open(config_from_args(args).hub.resolved_database_url())


def audit(args: argparse.Namespace) -> int:
    from iotguard.hub.credentials import credential_audit

    findings = credential_audit(_store(args), SystemClock().now(), unused_after=timedelta(days=args.unused_days))
    if args.json:
        print_json([f.to_dict() for f in findings])
    elif not findings:
        print("no shared, weak, expired or unused credentials found")
    else:
        for f in findings:
            print(f"{f.severity:<6} {f.category:<8} {f.kind:<18} {f.credential:<32} {f.reason}: {f.detail}")
    return 1 if any(f.severity == "high" for f in findings) else 0


def renewals(args: argparse.Namespace) -> int:
    from iotguard.hub.credentials import certificates_due_for_renewal

    due = certificates_due_for_renewal(_store(args), SystemClock().now(), timedelta(days=args.days))
    for d in due:
        print(f"{d.device_id:<32} expires {d.cert_not_after.isoformat() if d.cert_not_after else '-'}")
    if not due:
        print(f"no certificate expires within {args.days} days")
    return 0


def eos_set(args: argparse.Namespace) -> int:
    from iotguard.hub.credentials import set_end_of_support

    when = datetime.strptime(args.date, "%Y-%m-%d").replace(tzinfo=UTC)
    set_end_of_support(_store(args), args.model, when)
    print(f"{args.model}: end of support {when.date().isoformat()}")
    return 0


def eos_warnings(args: argparse.Namespace) -> int:
    from iotguard.hub.credentials import support_warnings

    warnings = support_warnings(_store(args), SystemClock().now(), timedelta(days=args.days))
    for w in warnings:
        state = "ENDED" if w.ended else "ends"
        print(f"{w.model:<16} {state} {w.end_of_support.date().isoformat()}  {len(w.devices)} device(s): "
              f"{', '.join(w.devices[:10])}{' ...' if len(w.devices) > 10 else ''}")
    if not warnings:
        print("no model reaches end of support in that window")
    return 0


def eos_show(args: argparse.Namespace) -> int:
    from iotguard.cli._common import open_hub_services

    facts = open_hub_services(config_from_args(args).hub).firmware.lifecycle_facts()
    rows = [{"model": r.model, "release": r.version, "end_of_support": r.end_of_support.isoformat(),
             "disclosure_contact": r.disclosure_contact} for r in facts]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no firmware release published yet")
    for row in rows:
        print(f"{row['model']:<16} release {row['release']:<6} end of support {row['end_of_support']}  "
              f"vulnerabilities: {row['disclosure_contact']}")
    return 0
