"""``iotguard models``: the hub's signed model artifacts (publish, ls, show, export)."""

from __future__ import annotations

import argparse
import base64
import sys
import zipfile
from pathlib import Path
from typing import Any

from iotguard.cli._common import add_config_argument, deliver_effects, hub_services_for, print_json
from iotguard.errors import ConfigError, MalformedError

__all__ = ["MAX_PARAMETER_FILE_BYTES", "register"]

#: Largest ``.npz`` parameter file ``models publish`` reads.
MAX_PARAMETER_FILE_BYTES = 16 * 1024 * 1024


def _summary(record: Any) -> dict[str, Any]:
    return {"name": record.name, "version": record.version, "sha256": record.sha256,
            "parameters": record.parameters, "metrics": record.metrics, "source": record.source,
            "published_by": record.published_by, "published_at": record.published_at.isoformat(),
            "artifact_bytes": len(record.artifact)}


def _load_parameters(path: Path) -> list[Any]:
    import numpy as np

    if path.stat().st_size > MAX_PARAMETER_FILE_BYTES:
        raise MalformedError(f"{path} is larger than {MAX_PARAMETER_FILE_BYTES} bytes")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = sorted(npz.files, key=lambda n: int(n.removeprefix("arr_")) if n.startswith("arr_") else -1)
            if any(not n.startswith("arr_") for n in names):
                raise MalformedError("parameter file must hold arr_0, arr_1, ... (numpy.savez positional arrays)")
            return [np.asarray(npz[n], dtype=np.float64) for n in names]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise MalformedError(f"{path} is not a NumPy .npz file of arrays") from exc


def _publish(args: argparse.Namespace) -> int:
    from iotguard.learn.model import Model

    metrics: dict[str, float] = {}
    for item in args.metric:
        key, sep, value = item.partition("=")
        try:
            metrics[key] = float(value)
        except ValueError as exc:
            raise ConfigError(f"--metric wants NAME=NUMBER, got {item!r}") from exc
        if not sep or not key:
            raise ConfigError(f"--metric wants NAME=NUMBER, got {item!r}")
    model = Model(features=args.features, classes=args.classes, hidden=args.hidden)
    params = _load_parameters(args.parameters)
    with hub_services_for(args) as services:
        record = services.models.publish(args.name, model, params, metrics=metrics,
                                         source=args.source or args.parameters.name, actor=args.actor)
        deliver_effects(services)
    print_json(_summary(record))
    return 0


def _ls(args: argparse.Namespace) -> int:
    with hub_services_for(args) as services:
        records = services.models.list()
    if args.json:
        print_json([_summary(r) for r in records])
        return 0
    if not records:
        print("no models published")
    for r in records:
        acc = r.metrics.get("accuracy")
        print(f"{r.name:<24} v{r.version:<4} {r.parameters:>8} params  sha256 {r.sha256[:16]}  "
              f"{'' if acc is None else f'accuracy {acc:.4f}  '}{r.published_at:%Y-%m-%d %H:%M}")
    sys.stdout.flush()
    return 0


def _show(args: argparse.Namespace) -> int:
    with hub_services_for(args) as services:
        record = services.models.get(args.name, args.version)
        key = services.models.signing_key()
    print_json({**_summary(record), "signing_key": base64.b64encode(key).decode()})
    return 0


def _export(args: argparse.Namespace) -> int:
    with hub_services_for(args) as services:
        record = services.models.get(args.name, args.version)
    args.output.write_bytes(record.artifact)
    print(f"wrote {args.output} ({len(record.artifact)} bytes, {record.name} v{record.version}, "
          f"sha256 {record.sha256})")
    return 0


def _publish_tuf(args: argparse.Namespace) -> int:
    from iotguard.cli.firmware import offline_passphrase
    from iotguard.cli.firmware_keys import load_model_signer
    from iotguard.updates import ModelTarget

    signer = load_model_signer(args.keys, args.device_model, offline_passphrase())
    with hub_services_for(args) as services:
        record = services.models.get(args.name, args.version)
        target = ModelTarget.for_artifact(args.device_model, record.name, record.version, record.artifact,
                                          signing_key=services.models.signing_key(),
                                          endorsement=services.models.endorsement())
        services.firmware.publish_model(target, record.artifact, model_signer=signer, actor=args.actor)
        deliver_effects(services)
    print_json({"device_model": target.device_model, "name": target.name, "version": target.version,
                "target": target.path, "sha256": target.sha256, "length": target.length})
    return 0


def register(sub: Any) -> None:
    """Add ``models`` to the ``iotguard`` parser."""
    p = sub.add_parser("models", help="trained models: publish signed artifacts, list, show, export")
    msub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    pub = msub.add_parser("publish", help="sign parameters (.npz of arr_0, arr_1, ...) as the next version of NAME")
    add_config_argument(pub)
    pub.add_argument("name")
    pub.add_argument("parameters", type=Path, metavar="NPZ")
    pub.add_argument("--features", type=int, required=True)
    pub.add_argument("--classes", type=int, required=True)
    pub.add_argument("--hidden", type=int, default=0, help="hidden units (0: softmax regression)")
    pub.add_argument("--metric", action="append", default=[], metavar="NAME=NUMBER")
    pub.add_argument("--source", help="training run or file the model came from (default: the file name)")
    pub.add_argument("--actor", default="operator", help="who publishes (audit log)")
    pub.set_defaults(func=_publish)
    ls = msub.add_parser("ls", help="published models and versions")
    add_config_argument(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_ls)
    show = msub.add_parser("show", help="one model version (latest by default) and the key devices verify it with")
    add_config_argument(show)
    show.add_argument("name")
    show.add_argument("--version", type=int)
    show.set_defaults(func=_show)
    exp = msub.add_parser("export", help="write a version's signed artifact (what a device verifies and runs)")
    add_config_argument(exp)
    exp.add_argument("name")
    exp.add_argument("output", type=Path, metavar="FILE")
    exp.add_argument("--version", type=int)
    exp.set_defaults(func=_export)
    tuf = msub.add_parser("publish-tuf", help="publish a version (latest by default) as a TUF target of a device "
                          "model's role in the firmware repository, signed with that model's offline release key "
                          "(devices with a trusted firmware root fetch models only this way)")
    add_config_argument(tuf)
    tuf.add_argument("name")
    tuf.add_argument("--device-model", required=True, help="the delegated device model whose devices run it")
    tuf.add_argument("--version", type=int)
    tuf.add_argument("--keys", type=Path, required=True, metavar="DIR", help="offline key directory")
    tuf.add_argument("--actor", default="operator", help="who publishes (audit log)")
    tuf.set_defaults(func=_publish_tuf)
