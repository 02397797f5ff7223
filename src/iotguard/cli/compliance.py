"""``iotguard compliance``: a compliance report built from the fleet's live state."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iotguard.cli._common import add_config_argument, config_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("compliance", help="compliance report (ETSI EN 303 645, NIST IR 8259A, OWASP IoT Top 10)")
    add_config_argument(p)
    s = p.add_subparsers(dest="compliance_command", metavar="ACTION", required=True)
    r = s.add_parser("report", help="check the live fleet state; each check cites its evidence")
    r.add_argument("--format", choices=("json", "html", "pdf"), default="json",
                   help="output format (default json)")
    r.add_argument("--output", "-o", help="write to this file instead of standard output")
    r.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    # Imported here: every ``iotguard`` command (an agent too) builds this parser, and the hub is heavy.
    from iotguard.hub.compliance import render_html, render_pdf, report
    from iotguard.hub.compose import build_hub_services

    services = build_hub_services(config_from_args(args).hub)
    try:
        doc = report(services)
    finally:
        services.store.engine.dispose()
    if args.format == "pdf":
        pdf = render_pdf(doc)
        if args.output:
            Path(args.output).write_bytes(pdf)
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(pdf)
            sys.stdout.buffer.flush()
        return 0
    text = render_html(doc) if args.format == "html" else json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
