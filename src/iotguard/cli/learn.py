"""``iotguard learn``: federated training runs on the hub (start, status, stop, ls)."""

from __future__ import annotations

import argparse
from typing import Any

from iotguard.cli._common import add_config_argument, deliver_effects, hub_services_for, print_json

__all__ = ["register"]


def _start(args: argparse.Namespace) -> int:
    import logging
    import re
    import sys

    from iotguard.errors import ConfigError
    from iotguard.hub.services.learning import RunSettings

    secure = not args.unsafe_plaintext
    if args.unsafe_plaintext:
        message = (f"UNSAFE: run {args.run_id} takes plaintext model updates (--unsafe-plaintext): the hub sees "
                   "every device's update; secure aggregation is off")
        logging.getLogger("iotguard.learn").warning(message)
        print(message, file=sys.stderr, flush=True)
    elif args.aggregator != "mean" or set(re.split("[,|]", args.compression)) != {"none"}:
        raise ConfigError("a run is secure by default (secure aggregation: FedAvg or FedBuff, the mean, no "
                          "compression); robust aggregators and compression need --unsafe-plaintext")
    clip_norm = args.clip_norm if args.clip_norm is not None or not secure else 1.0
    settings = RunSettings(
        model_name=args.model, features=args.features, classes=args.classes, hidden=args.hidden,
        strategy=args.strategy, rounds=args.rounds, min_participants=args.min_participants,
        deadline_s=args.deadline_s, buffer_size=args.buffer_size, aggregator=args.aggregator,
        max_update_norm=args.max_update_norm, clip_norm=clip_norm, compression=args.compression,
        topk_fraction=args.topk_fraction, fit={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr},
        secure=secure, epsilon=args.epsilon, delta=args.delta, secure_fraction=args.secure_fraction,
        max_staleness=args.max_staleness)
    with hub_services_for(args) as services:
        devices = list(args.device)
        if args.all_active:
            devices += [d.device_id for d in services.store.list_devices(status="active", limit=10_000)]
        run = services.learning.start(args.run_id, settings, devices, actor=args.actor)
        deliver_effects(services)
        print_json(services.learning.status(run.run_id) | {"enrolled": list(run.devices)})
    return 0


def _status(args: argparse.Namespace) -> int:
    with hub_services_for(args) as services:
        services.learning.tick(args.run_id)  # close a FedAvg round whose deadline passed
        print_json(services.learning.status(args.run_id))
    return 0


def _stop(args: argparse.Namespace) -> int:
    with hub_services_for(args) as services:
        services.learning.stop(args.run_id, actor=args.actor)
        deliver_effects(services)
        print_json(services.learning.status(args.run_id))
    return 0


def _ls(args: argparse.Namespace) -> int:
    with hub_services_for(args) as services:
        print_json([services.learning.status(r.run_id) for r in services.learning.runs()])
    return 0


def _contributions(args: argparse.Namespace) -> int:
    with hub_services_for(args) as services:
        print_json(services.learning.contributions(args.device))
    return 0


def register(sub: Any) -> None:
    """Add ``learn`` to the ``iotguard`` parser."""
    p = sub.add_parser("learn", help="federated training runs: start, status, stop, ls")
    lsub = p.add_subparsers(dest="learn_command", metavar="SUBCOMMAND", required=True)
    start = lsub.add_parser("start", help="enrol devices whose posture is affirming and start a run")
    add_config_argument(start)
    start.add_argument("run_id")
    start.add_argument("--model", required=True, help="name the trained model is published under")
    start.add_argument("--features", type=int, required=True)
    start.add_argument("--classes", type=int, required=True)
    start.add_argument("--hidden", type=int, default=0)
    start.add_argument("--strategy", choices=("fedavg", "fedbuff"), default="fedavg",
                       help="fedavg: synchronous rounds; fedbuff: a round per buffer of ready devices, stale updates "
                            "weighted down (secure by default too: each buffer is a secure-aggregation round)")
    start.add_argument("--rounds", type=int, default=10, help="model versions to reach, then publish")
    start.add_argument("--min-participants", type=int, default=3, help="at least 3 in a secure run (default 3)")
    start.add_argument("--deadline-s", type=float, default=300.0, help="FedAvg round deadline")
    start.add_argument("--buffer-size", type=int, default=10,
                       help="FedBuff updates per step (a secure run: at least 3 and --min-participants)")
    start.add_argument("--aggregator", choices=("mean", "median", "trimmed_mean"), default="mean")
    start.add_argument("--max-update-norm", type=float, default=10.0)
    start.add_argument("--clip-norm", type=float, default=None,
                       help="devices clip their update to this L2 norm (default: 1.0 in a secure run, none otherwise)")
    start.add_argument("--compression", default="none", metavar="OFFER[,OFFER...]",
                       help="update compression each round offers: none, q8, topk or topk+q8, or alternatives "
                            "best first (topk+q8|q8|none: each device gets the first it accepts and whose update "
                            "fits its byte limit); a comma list is cycled by round (round v uses entry v mod n); "
                            "the hub refuses updates outside the offer (needs --unsafe-plaintext unless none)")
    start.add_argument("--topk-fraction", type=float, default=0.01)
    start.add_argument("--max-staleness", type=int, default=100, metavar="N",
                       help="fedbuff: refuse an update trained on a model more than N versions old (update_stale; "
                            "the device trains on the current model; default 100)")
    start.add_argument("--secure-fraction", type=float, default=1.0, metavar="F",
                       help="secure runs: each round sends this fraction of the coordinates through secure "
                            "aggregation (random-k chosen by the round, error feedback on the devices; default 1)")
    start.add_argument("--secure", action="store_true",
                       help="updates only through secure aggregation (FedAvg or FedBuff, mean, clipped): the "
                            "default; kept so older scripts still run")
    start.add_argument("--unsafe-plaintext", action="store_true",
                       help="UNSAFE: take plaintext updates (the hub sees each device's update); needed for robust "
                            "aggregators and top-k / 8-bit compression; logged loudly")
    start.add_argument("--epsilon", type=float, default=0.0,
                       help="DP-FedAvg: the whole run's epsilon, noise added on the devices, charged per subject "
                            "in the privacy ledger (not with --unsafe-plaintext; 0: no DP)")
    start.add_argument("--delta", type=float, default=1e-5, help="the run's delta (with --epsilon)")
    start.add_argument("--epochs", type=int, default=1)
    start.add_argument("--batch-size", type=int, default=32)
    start.add_argument("--lr", type=float, default=0.1)
    start.add_argument("--device", action="append", default=[], metavar="ID", help="enrol this device (repeat)")
    start.add_argument("--all-active", action="store_true", help="enrol every active device")
    start.add_argument("--actor", default="operator")
    start.set_defaults(func=_start)
    for name, func, help_ in (("status", _status, "a run's progress (closes a FedAvg round past its deadline)"),
                              ("stop", _stop, "stop a run (nothing is published)")):
        c = lsub.add_parser(name, help=help_)
        add_config_argument(c)
        c.add_argument("run_id")
        if name == "stop":
            c.add_argument("--actor", default="operator")
        c.set_defaults(func=func)
    ls = lsub.add_parser("ls", help="every run")
    add_config_argument(ls)
    ls.set_defaults(func=_ls)
    contrib = lsub.add_parser("contributions", help="runs a device was enrolled in and the models they published "
                              "(what an erasure of its subject must retrain)")
    add_config_argument(contrib)
    contrib.add_argument("--device", action="append", required=True, metavar="ID")
    contrib.set_defaults(func=_contributions)
