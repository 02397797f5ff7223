"""``iotguard detect`` and ``iotguard playbooks``: evaluate detectors on labeled logs, check playbooks."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from iotguard.cli._common import add_config_argument, config_from_args, deliver_effects, open_hub_services
from iotguard.detection import (
    EvaluationReport,
    ScorerConfig,
    ZeekLimits,
    evaluate_flows,
    flows_from_pcap,
    parse_conn_log,
    parse_feed,
    parse_playbook,
)
from iotguard.detection.feed import MAX_FEED_BYTES
from iotguard.detection.flows import FlowBatch
from iotguard.detection.geo import CountryDatabase
from iotguard.errors import ConfigError

__all__ = ["format_report", "register"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``iotguard detect`` and ``iotguard playbooks``."""
    detect = subparsers.add_parser("detect", help="detection: evaluate detectors on labeled flow logs")
    sub = detect.add_subparsers(dest="detect_command", metavar="SUBCOMMAND", required=True)
    ev = sub.add_parser("eval", help="fit on early benign flows of a labeled Zeek conn.log, score the rest, report")
    ev.add_argument("--zeek", metavar="FILE", required=True, help="Zeek conn.log (TSV, JSON lines or IoT-23 labeled)")
    ev.add_argument("--label-column", default="label", help="label column (default: label)")
    ev.add_argument("--train-share", type=float, default=0.2,
                    help="earliest share of flows (time order) whose benign flows are fitted on (default 0.2)")
    ev.add_argument("--target-fpr", type=float, default=0.01, help="false-positive rate to calibrate to (0.01)")
    ev.add_argument("--batch", type=int, default=1024, help="flows per streaming batch (default 1024)")
    ev.add_argument("--feed", metavar="FILE",
                    help="threat feed (one address or CIDR network per line): grade the known-bad address rule too")
    ev.add_argument("--countries", metavar="MMDB",
                    help="MaxMind-format country database (.mmdb): grade the new-country rule too")
    ev.add_argument("--json", action="store_true", help="end with one JSON object with every number")
    ev.set_defaults(func=_eval)
    flows = sub.add_parser("flows", help="print the flows of a pcap or Zeek conn.log as JSON lines")
    source = flows.add_mutually_exclusive_group(required=True)
    source.add_argument("--pcap", metavar="FILE", help="pcap or pcapng capture")
    source.add_argument("--zeek", metavar="FILE", help="Zeek conn.log")
    flows.set_defaults(func=_flows)
    status = sub.add_parser("status", help="the hub's detection: active playbook, alerts, actions waiting for approval")
    add_config_argument(status)
    status.add_argument("--json", action="store_true", help="JSON output")
    status.set_defaults(func=_status)

    playbooks = subparsers.add_parser("playbooks", help="response playbooks: validate, activate, ls")
    psub = playbooks.add_subparsers(dest="playbooks_command", metavar="SUBCOMMAND", required=True)
    validate = psub.add_parser("validate", help="check a playbook file; print its rules and guard rails")
    validate.add_argument("file", metavar="FILE")
    validate.add_argument("--json", action="store_true", help="print JSON")
    validate.set_defaults(func=_validate)
    activate = psub.add_parser("activate", help="validate a playbook and make it the hub's active one (audited)")
    activate.add_argument("file", metavar="FILE")
    activate.add_argument("--actor", default="cli", help="who activates (recorded in the audit log)")
    add_config_argument(activate)
    activate.set_defaults(func=_activate)
    pls = psub.add_parser("ls", help="the hub's active playbook (the shipped default until one is activated)")
    add_config_argument(pls)
    pls.set_defaults(func=_ls_playbooks)


def _read(path: str, limit: int) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", code="file_unreadable") from None
    if size > limit:
        raise ConfigError(f"{path} is larger than {limit} bytes", code="file_too_large")
    return p.read_bytes()


def _eval(args: argparse.Namespace) -> int:
    log_ = parse_conn_log(_read(args.zeek, ZeekLimits().max_bytes), label_column=args.label_column)
    if log_.labels is None:  # parse_conn_log returns labels whenever a column is named
        raise ConfigError("no labels", code="zeek_no_label_column")
    if not 1 <= args.batch <= 1_000_000:
        raise ConfigError("--batch must be 1..1000000", code="config_invalid")
    feed = parse_feed(_read(args.feed, MAX_FEED_BYTES), name=Path(args.feed).name) if args.feed else None
    report = evaluate_flows(log_.flows, log_.labels, train_share=args.train_share, batch_size=args.batch,
                            local_hosts=log_.local_hosts, feed=feed,
                            countries=CountryDatabase(args.countries) if args.countries else None,
                            scorer=ScorerConfig(target_fpr=args.target_fpr))
    print(format_report(report, args.zeek))
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True, allow_nan=False))
    return 0


def _num(x: float | None, unit: str = "", digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}{unit}"


def format_report(r: EvaluationReport, name: str) -> str:
    """Human-readable evaluation report."""
    return "\n".join([
        f"Evaluation of {name}",
        f"  flows                {r.flows}  (fitted on {r.train_flows} benign of the earliest, "
        f"scored {r.scored_flows}, {r.scored_malicious} malicious)",
        f"  ROC AUC              {_num(r.auc)}  (learned score alone {_num(r.auc_learned)})",
        f"  TPR at 1 % FPR       {_num(r.tpr_at_1pct_fpr)}  (learned score alone {_num(r.tpr_at_1pct_fpr_learned)})",
        f"  flow rules flagged   {r.rule_flagged} later flows, {r.rule_flagged_malicious} of them malicious",
        f"  at the calibrated threshold or a rule: precision {_num(r.precision)}, recall {_num(r.recall)}, "
        f"FPR {_num(r.fpr)}",
        f"  throughput           {r.flows_per_s:,.0f} flows/s (feature extraction + scoring + flow rules)",
        f"  attacking hosts      {r.attackers_detected} of {r.attackers} detected; delay median "
        f"{_num(r.delay_median_s, ' s', 2)}, p90 {_num(r.delay_p90_s, ' s', 2)}",
        f"  per-device models    {r.device_models}",
    ])


def _flows(args: argparse.Namespace) -> int:
    if args.pcap:
        result = flows_from_pcap(_read(args.pcap, 1024 * 1024 * 1024))
        flows = result.flows
        if result.skipped:
            log.warning("skipped packets: %s", dict(result.skipped))
    else:
        batch: FlowBatch = parse_conn_log(_read(args.zeek, ZeekLimits().max_bytes)).flows
        flows = [batch.flow(i) for i in range(len(batch))]
    for f in flows:
        print(json.dumps({"ts": f.ts, "orig_h": f.orig_h, "orig_p": f.orig_p, "resp_h": f.resp_h, "resp_p": f.resp_p,
                          "proto": f.proto, "duration": f.duration, "orig_bytes": f.orig_bytes,
                          "resp_bytes": f.resp_bytes, "conn_state": f.conn_state, "orig_pkts": f.orig_pkts,
                          "resp_pkts": f.resp_pkts}, sort_keys=True))
    return 0


def _validate(args: argparse.Namespace) -> int:
    pb = parse_playbook(_read(args.file, 256 * 1024))
    for option in pb.unsafe:
        log.warning("playbook %s turns on %s: destructive actions run without approval", pb.name, option)
    rails = pb.guard_rails
    if args.json:
        print(json.dumps({
            "name": pb.name, "revision": pb.revision, "webhook": pb.webhook, "unsafe": pb.unsafe,
            "guard_rails": {"blast_radius_percent": rails.blast_radius_percent,
                            "blast_radius_min_devices": rails.blast_radius_min_devices,
                            "cooldown_s": rails.cooldown_s, "approval": sorted(a.value for a in rails.approval),
                            "auto_release": rails.auto_release},
            "rules": [{"name": r.name, "detectors": sorted(r.detectors), "min_severity": r.min_severity.name.lower(),
                       "min_score": r.min_score, "models": sorted(r.models), "actions": [a.value for a in r.actions]}
                      for r in pb.rules]}, indent=2, sort_keys=True))
        return 0
    print(f"playbook {pb.name} revision {pb.revision}: valid")
    print(f"  guard rails: blast radius {rails.blast_radius_percent:g} % per segment "
          f"(at least {rails.blast_radius_min_devices}), cooldown {rails.cooldown_s:g} s, "
          f"approval for {', '.join(sorted(a.value for a in rails.approval)) or 'nothing'}, "
          f"auto-release {'on' if rails.auto_release else 'off'}")
    for r in pb.rules:
        print(f"  rule {r.name}: {', '.join(sorted(r.detectors)) or 'any detector'} at "
              f"{r.min_severity.name.lower()}+ -> {', '.join(a.value for a in r.actions)}")
    for option in pb.unsafe:
        print(f"  WARNING: {option} is on")
    return 0


def _status(args: argparse.Namespace) -> int:
    services = open_hub_services(config_from_args(args).hub)
    d = services.detection
    book = d.playbook
    counts = d.counts()
    waiting = [a.to_dict() for a in d.awaiting_approval()]
    quarantined = sorted(p.device_id for p in services.posture.posture if p.quarantined)
    report: dict[str, object] = {"playbook": f"{book.name}@{book.revision}", "alerts": sum(counts.values()),
              "unacknowledged": len(d.alerts(unacked=True, limit=100000)),
              "by_detector": {f"{det}/{sev}": n for (det, sev), n in sorted(counts.items())},
              "awaiting_approval": waiting,
              "quarantined": quarantined,
              "threat_feed": services.flows.feed.status()}
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    print(f"playbook {report['playbook']}; {report['alerts']} alerts ({report['unacknowledged']} unacknowledged); "
          f"quarantined: {', '.join(quarantined) or 'none'}")
    feed = services.flows.feed.status()
    print(f"threat feed {feed['file']}: " + (f"{feed['networks']} networks" if feed["present"] else "none (no "
          "known-bad address rule)") + (f"; the file as it is now was refused ({feed['error']})" if feed["error"]
                                        else ""))
    for a in waiting:
        print(f"  waiting for approval: action {a['id']} {a['kind']} on {a['device_id']} "
              f"(alert {a['alert_id'][:16]}, {a['reason']})")
    return 0


def _activate(args: argparse.Namespace) -> int:
    from iotguard.hub.services.audit import OutboxAuditSink
    from iotguard.hub.services.detection import activate_playbook

    services = open_hub_services(config_from_args(args).hub)
    book = activate_playbook(Path(services.cfg.data_dir), _read(args.file, 256 * 1024), actor=args.actor,
                             audit=OutboxAuditSink(services.outbox, services.clock), now=services.clock.now())
    deliver_effects(services)
    for option in book.unsafe:
        log.warning("playbook %s turns on %s: destructive actions run without approval", book.name, option)
    print(f"playbook {book.name} revision {book.revision} is active")
    return 0


def _ls_playbooks(args: argparse.Namespace) -> int:
    services = open_hub_services(config_from_args(args).hub)
    book = services.detection.playbook
    print(f"active: {book.name} revision {book.revision} ({len(book.rules)} rules)")
    return 0
