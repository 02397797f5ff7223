"""``iotguard attest``, ``endorsement-key``, ``reference-values`` and ``attestation-policy`` (on the hub host)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from iotguard.cli._common import add_config_argument, config_from_args, deliver_effects, open_hub_services, print_json
from iotguard.errors import ConfigError

#: Largest stage image ``reference-values add --images`` hashes (as the boot chain reads at most).
_MAX_IMAGE_BYTES = 64 * 1024 * 1024


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("attest", help="queue an attestation challenge to a device (sent on its cmd topic)")
    add_config_argument(a)
    a.add_argument("device_id")
    a.set_defaults(func=attest)

    e = sub.add_parser("endorsement-key",
                       help="record a TPM device's endorsement key (its AK must then be certified against it)")
    add_config_argument(e)
    e.add_argument("device_id")
    e.add_argument("file", type=Path, help="the EK's marshalled TPM2B_PUBLIC (TpmRootOfTrust.endorsement_key())")
    e.add_argument("--certificate", type=Path, metavar="FILE",
                   help="explicit fallback for a TPM without an EK certificate in NV (the agent sends the one in NV): "
                        "the EK's manufacturer certificate (DER, or PEM with its intermediates after it); "
                        "checked against hub.tpm_ek_roots when the AK is certified")
    e.set_defaults(func=record_endorsement_key)

    t = sub.add_parser("tpm-ek", help="read a TPM's endorsement key into a file (at manufacture; for endorsement-key)")
    t.add_argument("--tcti", required=True, help="the TPM, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321")
    t.add_argument("--out", type=Path, required=True, help="file to write the EK's marshalled TPM2B_PUBLIC to")
    t.set_defaults(func=export_endorsement_key)

    r = sub.add_parser("reference-values", help="firmware releases attestation accepts, per device model")
    add_config_argument(r)
    s = r.add_subparsers(dest="reference_command", metavar="ACTION", required=True)
    ls = s.add_parser("ls", help="list allowed releases")
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(func=list_references)
    ad = s.add_parser("add", help="allow a release of a model (several versions may be allowed at once)")
    ad.add_argument("model")
    ad.add_argument("version")
    ad.add_argument("--digest", action="append", default=[], metavar="STAGE=HEX",
                    help="SHA-256 of one boot stage's image (repeat per stage)")
    ad.add_argument("--images", type=Path, help="directory of the release's <stage>.img files to hash")
    ad.set_defaults(func=add_reference)
    rm = s.add_parser("rm", help="stop allowing a release")
    rm.add_argument("model")
    rm.add_argument("version")
    rm.set_defaults(func=remove_reference)

    p = sub.add_parser("attestation-policy", help="appraisal policy per device model")
    add_config_argument(p)
    ps = p.add_subparsers(dest="attestation_policy_command", metavar="ACTION", required=True)
    st = ps.add_parser("set", help="store a model's appraisal policy (TOML with one [models.<model>] table)")
    st.add_argument("model")
    st.add_argument("file", type=Path)
    st.set_defaults(func=set_policy)
    sh = ps.add_parser("show", help="print the stored appraisal policies")
    sh.set_defaults(func=show_policies)


def attest(args: argparse.Namespace) -> int:
    services = open_hub_services(config_from_args(args).hub)
    services.attestation.queue_challenge(args.device_id)
    print(f"attestation challenge queued for {args.device_id}; a hub connected to the broker sends it "
          "(result: iotguard devices posture)")
    return 0


def record_endorsement_key(args: argparse.Namespace) -> int:
    from iotguard.keys.tpm import MAX_PUBLIC_AREA_BYTES

    path: Path = args.file
    if not path.is_file() or path.stat().st_size > MAX_PUBLIC_AREA_BYTES:
        raise ConfigError(f"{path}: missing or larger than {MAX_PUBLIC_AREA_BYTES} bytes")
    certificate = b""
    if args.certificate is not None:
        from iotguard.attestation.endorsement import MAX_EK_CHAIN_BYTES

        cert_path: Path = args.certificate
        if not cert_path.is_file() or cert_path.stat().st_size > MAX_EK_CHAIN_BYTES:
            raise ConfigError(f"{cert_path}: missing or larger than {MAX_EK_CHAIN_BYTES} bytes")
        certificate = cert_path.read_bytes()
    services = open_hub_services(config_from_args(args).hub)
    services.attestation.certification.record_endorsement_key(args.device_id, path.read_bytes(), certificate)
    deliver_effects(services)
    print(f"endorsement key of {args.device_id} recorded; its TPM attestation key must be certified against it")
    return 0


def export_endorsement_key(args: argparse.Namespace) -> int:
    import tempfile

    from iotguard.fileio import atomic_write
    from iotguard.keys.tpm import TpmRootOfTrust

    with tempfile.TemporaryDirectory(prefix="iotguard-tpm-ek-") as scratch:
        root = TpmRootOfTrust(scratch, tcti=args.tcti)
        try:
            ek = root.endorsement_key()
        finally:
            root.close()
    atomic_write(args.out, ek)
    print(f"endorsement key written to {args.out} (SHA-256 {hashlib.sha256(ek).hexdigest()[:16]}...)")
    return 0


def _digests(args: argparse.Namespace) -> dict[str, bytes]:
    from iotguard.agent.boot import BOOT_CHAIN

    out: dict[str, bytes] = {}
    for item in args.digest:
        stage, _, value = str(item).partition("=")
        try:
            out[stage] = bytes.fromhex(value)
        except ValueError:
            raise ConfigError(f"--digest {item!r}: expected STAGE=HEX") from None
    if args.images is not None:
        for boot_stage in BOOT_CHAIN:
            image = args.images / f"{boot_stage.name}.img"
            if not image.is_file() or image.stat().st_size > _MAX_IMAGE_BYTES:
                raise ConfigError(f"{image}: missing or larger than {_MAX_IMAGE_BYTES} bytes")
            out.setdefault(boot_stage.name, hashlib.sha256(image.read_bytes()).digest())
    return out


def add_reference(args: argparse.Namespace) -> int:
    from iotguard.attestation import reference_release

    release = reference_release(args.model, args.version, _digests(args))
    services = open_hub_services(config_from_args(args).hub)
    services.attestation.add_reference(release)
    deliver_effects(services)
    print(f"{args.model} {args.version} allowed ({len(release.measurements)} stages)")
    return 0


def remove_reference(args: argparse.Namespace) -> int:
    services = open_hub_services(config_from_args(args).hub)
    if not services.attestation.store.remove_reference(args.model, args.version):
        print(f"{args.model} {args.version} was not allowed")
        return 1
    print(f"{args.model} {args.version} no longer allowed")
    return 0


def list_references(args: argparse.Namespace) -> int:
    releases = open_hub_services(config_from_args(args).hub).attestation.store.references()
    if args.json:
        print_json([{"model": r.model, "version": r.version,
                     "measurements": {k: v.hex() for k, v in r.measurements.items()}} for r in releases])
        return 0
    print(f"{'MODEL':<16} {'VERSION':<12} STAGES")
    for r in releases:
        print(f"{r.model:<16} {r.version:<12} {', '.join(sorted(r.measurements))}")
    return 0


def set_policy(args: argparse.Namespace) -> int:
    text = args.file.read_text(encoding="utf-8")
    open_hub_services(config_from_args(args).hub).attestation.set_policy(args.model, text)
    print(f"appraisal policy of {args.model} stored")
    return 0


def show_policies(args: argparse.Namespace) -> int:
    for model, text in sorted(open_hub_services(config_from_args(args).hub).attestation.store.policies().items()):
        print(f"# {model}\n{text.rstrip()}\n")
    return 0
