"""``iotguard rollout``: staged firmware rollouts (start, status, pause, resume, abort)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING

from iotguard.cli._common import add_config_argument, config_from_args, deliver_effects, open_hub_services, print_json
from iotguard.rollout import DEFAULT_STAGES, HealthGates

if TYPE_CHECKING:
    from iotguard.hub.compose import HubServices

__all__ = ["register"]


def _stages(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("stages are comma-separated percentages, e.g. 1,10,50,100") from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``iotguard rollout`` and its subcommands."""
    p = sub.add_parser("rollout", help="staged firmware rollouts with health gates")
    add_config_argument(p)
    s = p.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    start = s.add_parser("start", help="roll a published release out in stages")
    start.add_argument("model")
    start.add_argument("version", type=int)
    start.add_argument("--stages", type=_stages, default=list(DEFAULT_STAGES), metavar="P1,P2,...",
                       help="percentages of the model's fleet (default 1,10,50,100)")
    start.add_argument("--id", dest="rollout_id", help="campaign id (default MODEL-VERSION)")
    start.add_argument("--max-rollback-rate", type=float, default=0.0,
                       help="share of the cohort that may roll back before the rollout aborts (default 0)")
    start.add_argument("--max-attestation-failure-rate", type=float, default=0.0,
                       help="share of updated devices that may fail attestation before it pauses (default 0)")
    start.add_argument("--max-rejection-rate", type=float, default=0.05,
                       help="share of updated devices' telemetry ingest may reject before it pauses (default 0.05)")
    start.add_argument("--min-reported", type=float, default=0.9,
                       help="share of a stage's cohort that must report a committed install to advance (default 0.9)")
    start.add_argument("--soak-s", type=float, default=0.0,
                       help="seconds each stage runs at least before the next one starts (default 0)")
    start.add_argument("--actor", default="cli", help="who starts it (recorded in the audit log)")
    start.set_defaults(func=_start)
    status = s.add_parser("status", help="one campaign (or all) with its cohort's health")
    status.add_argument("rollout_id", nargs="?")
    status.set_defaults(func=_status)
    for name, help_ in (("pause", "pause a running campaign"), ("resume", "resume a paused campaign"),
                        ("abort", "abort a campaign for good")):
        move = s.add_parser(name, help=help_)
        move.add_argument("rollout_id")
        move.add_argument("--actor", default="cli", help="who does it (recorded in the audit log)")
        if name != "resume":
            move.add_argument("--reason", default="operator")
        move.set_defaults(func=_move, move=name)


def _open(args: argparse.Namespace) -> HubServices:
    return open_hub_services(config_from_args(args).hub)


def _start(args: argparse.Namespace) -> int:
    gates = HealthGates(max_rollback_rate=args.max_rollback_rate,
                        max_attestation_failure_rate=args.max_attestation_failure_rate,
                        max_rejection_rate=args.max_rejection_rate, min_reported=args.min_reported,
                        soak=timedelta(seconds=args.soak_s))
    services = _open(args)
    campaign = services.rollouts.start(args.model, args.version, actor=args.actor, stages=args.stages, gates=gates,
                                       rollout_id=args.rollout_id)
    deliver_effects(services)
    print_json(services.rollouts.status(campaign.rollout_id).to_dict())
    return 0


def _status(args: argparse.Namespace) -> int:
    services = _open(args)
    if args.rollout_id:
        print_json(services.rollouts.status(args.rollout_id).to_dict())
    else:
        print_json([services.rollouts.status(c.rollout_id).to_dict() for c in services.rollouts.campaigns()])
    return 0


def _move(args: argparse.Namespace) -> int:
    services = _open(args)
    rollouts = services.rollouts
    if args.move == "pause":
        rollouts.pause(args.rollout_id, actor=args.actor, reason=args.reason)
    elif args.move == "resume":
        rollouts.resume(args.rollout_id, actor=args.actor)
    else:
        rollouts.abort(args.rollout_id, actor=args.actor, reason=args.reason)
    deliver_effects(services)
    print_json(services.rollouts.status(args.rollout_id).to_dict())
    return 0
