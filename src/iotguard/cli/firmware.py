"""``iotguard firmware``: offline TUF keys and the hub's firmware repository."""

from __future__ import annotations

import argparse
import getpass
import os
from datetime import date
from pathlib import Path

from iotguard.cli._common import (
    add_config_argument,
    config_from_args,
    deliver_effects,
    open_hub_services,
    print_json,
)
from iotguard.cli.firmware_keys import (
    create_model_key,
    init_offline_keys,
    load_model_signer,
    load_offline_signers,
)
from iotguard.errors import ConfigError, MalformedError
from iotguard.updates import FirmwareRelease

#: Largest image ``firmware publish`` reads.
MAX_IMAGE_BYTES = 64 * 1024 * 1024

__all__ = ["PASSPHRASE_ENV", "offline_passphrase", "register"]

#: Environment variable holding the offline keys' passphrase (else it is prompted for).
PASSPHRASE_ENV = "IOTGUARD_FIRMWARE_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``iotguard firmware`` and its subcommands."""
    parser = subparsers.add_parser("firmware", help="secure firmware updates (TUF): keys and releases")
    sub = parser.add_subparsers(dest="firmware_command", metavar="SUBCOMMAND", required=True)
    keys = sub.add_parser("keys", help="offline root and targets keys (kept outside the hub)")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    init = keys_sub.add_parser(
        "init",
        help="create root keys (threshold signing) and a targets key in DIR, encrypted with a passphrase "
        f"(from ${PASSPHRASE_ENV} or prompted)",
    )
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--root-keys", type=int, default=3, help="number of root keys (default 3)")
    init.add_argument("--threshold", type=int, default=2, help="root signatures required (default 2)")
    init.set_defaults(func=_keys_init)
    rotate = keys_sub.add_parser(
        "rotate", help="sign the hub repository's next root with the current root keys (DIR) for the new ones "
        "(NEW_DIR, made by keys init; both passphrases are the same), and/or (--online) for a new online "
        "snapshot/timestamp key created in the hub's key store",
    )
    add_config_argument(rotate)
    rotate.add_argument("directory", type=Path, metavar="DIR")
    rotate.add_argument("new_directory", type=Path, metavar="NEW_DIR", nargs="?")
    rotate.add_argument("--online", action="store_true",
                        help="replace the online key (the root keys stay those of DIR unless NEW_DIR is given)")
    rotate.set_defaults(func=_keys_rotate)

    def hub_command(name: str, help_: str, *, keys: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        add_config_argument(p)
        if keys:
            p.add_argument("--keys", type=Path, required=True, metavar="DIR", help="offline key directory")
        return p

    repo_init = hub_command("init", "create the hub's TUF repository from the offline root and targets keys")
    repo_init.add_argument("--root-out", type=Path, required=True, metavar="FILE",
                           help="write the initial root (devices trust it at enrolment) here")
    repo_init.set_defaults(func=_repo_init)
    model = hub_command("model", "delegate a device model to a new offline release key (created in DIR)")
    model.add_argument("model")
    model.set_defaults(func=_model_add)
    publish = hub_command("publish", "sign and publish a release with the model's offline release key")
    publish.add_argument("model")
    publish.add_argument("version", type=int)
    publish.add_argument("image", type=Path)
    publish.add_argument("--end-of-support", required=True, type=date.fromisoformat, metavar="YYYY-MM-DD")
    publish.add_argument("--contact", required=True, help="vulnerability disclosure contact")
    publish.add_argument("--measurement", action="append", default=[], metavar="STAGE=SHA256",
                         help="reference value of a boot stage (repeatable)")
    publish.set_defaults(func=_publish)
    ls = hub_command("ls", "list the published releases of a model", keys=False)
    ls.add_argument("model")
    ls.set_defaults(func=_ls)
    revoke = hub_command("revoke", "withdraw a release (signed with the model's release key)")
    revoke.add_argument("model")
    revoke.add_argument("version", type=int)
    revoke.set_defaults(func=_revoke)


def offline_passphrase() -> bytes:
    """The offline keys' passphrase (from the environment variable, else prompted twice)."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        value = getpass.getpass("offline key passphrase: ")
        if getpass.getpass("again: ") != value:
            raise ConfigError("passphrases differ")
    return value.encode()


def _keys_init(args: argparse.Namespace) -> int:
    description = init_offline_keys(
        args.directory, root_keys=args.root_keys, threshold=args.threshold, passphrase=offline_passphrase(),
    )
    print_json({"directory": str(args.directory), **description})
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    if args.new_directory is None and not args.online:
        raise ConfigError("name the new root keys (NEW_DIR), --online, or both")
    passphrase = offline_passphrase()
    old = load_offline_signers(args.directory, passphrase)
    services = open_hub_services(config_from_args(args).hub)
    out: dict[str, object] = {}
    current = old
    if args.new_directory is not None:
        current = load_offline_signers(args.new_directory, passphrase)
        out["root_version"] = services.firmware.rotate_root(old_signers=old.root, new_signers=current.root,
                                                            new_threshold=current.root_threshold, actor="cli")
        out["threshold"] = current.root_threshold
    if args.online:
        out["online_keyid"] = services.firmware.rotate_online_key(
            root_signers=current.root, root_threshold=current.root_threshold, actor="cli")
    deliver_effects(services)
    print_json(out)
    return 0


def _repo_init(args: argparse.Namespace) -> int:
    offline = load_offline_signers(args.keys, offline_passphrase())
    services = open_hub_services(config_from_args(args).hub)
    root = services.firmware.initialise(root_signers=offline.root, root_threshold=offline.root_threshold,
                                        targets_signer=offline.targets, actor="cli")
    args.root_out.write_bytes(root)
    deliver_effects(services)
    print_json({"root": str(args.root_out)})
    return 0


def _model_add(args: argparse.Namespace) -> int:
    passphrase = offline_passphrase()
    offline = load_offline_signers(args.keys, passphrase)
    services = open_hub_services(config_from_args(args).hub)
    signer = create_model_key(args.keys, args.model, passphrase)
    services.firmware.add_model(args.model, model_signer=signer, targets_signer=offline.targets, actor="cli")
    deliver_effects(services)
    print_json({"model": args.model, "keyid": signer.public_key.keyid})
    return 0


def _publish(args: argparse.Namespace) -> int:
    if args.image.stat().st_size > MAX_IMAGE_BYTES:
        raise MalformedError(f"image larger than {MAX_IMAGE_BYTES} bytes")
    measurements = {}
    for item in args.measurement:
        stage, sep, digest = item.partition("=")
        if not sep:
            raise MalformedError("--measurement takes STAGE=SHA256")
        measurements[stage] = digest.lower()
    image = args.image.read_bytes()
    release = FirmwareRelease.for_image(args.model, args.version, image, end_of_support=args.end_of_support,
                                        disclosure_contact=args.contact, measurements=measurements)
    signer = load_model_signer(args.keys, args.model, offline_passphrase())
    services = open_hub_services(config_from_args(args).hub)
    services.firmware.publish(release, image, model_signer=signer, actor="cli")
    deliver_effects(services)
    print_json({"model": release.model, "version": release.version, "sha256": release.image_sha256,
                "length": release.image_length})
    return 0


def _ls(args: argparse.Namespace) -> int:
    services = open_hub_services(config_from_args(args).hub)
    print_json([
        {"model": r.model, "version": r.version, "sha256": r.image_sha256, "length": r.image_length,
         "end_of_support": r.end_of_support.isoformat(), "disclosure_contact": r.disclosure_contact,
         "measurements": dict(r.measurements)}
        for r in services.firmware.releases(args.model)
    ])
    return 0


def _revoke(args: argparse.Namespace) -> int:
    signer = load_model_signer(args.keys, args.model, offline_passphrase())
    services = open_hub_services(config_from_args(args).hub)
    services.firmware.revoke(args.model, args.version, model_signer=signer, actor="cli")
    deliver_effects(services)
    print_json({"model": args.model, "revoked": args.version})
    return 0
