"""``iotguard audit ...`` and ``iotguard witness ...``.

``audit`` works on the hub database (``--db``, default from the config) and
the hub key store (``--keys``, default the hub's): publish checkpoints,
produce proofs and exports, verify exports offline with only the log's
verifier key, and monitor a live log. ``witness`` runs an independent
witness with its own state directory and key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotguard.audit.chain import ANCHOR_PROOF_FORMAT
from iotguard.audit.log import TransparencyLog
from iotguard.audit.monitor import LocalLogSource, LogSource, Monitor
from iotguard.audit.note import SIG_COSIGNATURE_V1, NoteSigner, NoteVerifier
from iotguard.audit.verify import (
    EXPORT_FORMAT,
    INCLUSION_FORMAT,
    ExportBundle,
    InclusionBundle,
    export_segment,
    inclusion_bundle,
    verify_export,
    verify_inclusion_bundle,
)
from iotguard.audit.witness import Witness
from iotguard.cli.audit_chain import add_verify_options, register_chain, verify_anchor_proof_file
from iotguard.cli.audit_witness import add_listen_options, register_cosign, serve_witness
from iotguard.errors import ConfigError, MalformedError, ProofError
from iotguard.keys.keystore import KeyKind, KeyStore
from iotguard.keys.software import SoftwareKeyStore

__all__ = ["DEFAULT_ORIGIN", "register"]

#: Origin (and checkpoint key name) of the hub's log unless configured.
DEFAULT_ORIGIN = "iotguard.local/audit"
_WITNESS_KEY = "witness"
#: Exit code of ``monitor --once`` and ``witness run --once`` when they raise an alert.
EXIT_ALERT = 3


def _out(text: str, path: str | None) -> None:
    if path:
        Path(path).write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _read_arg(value: str) -> str:
    """A literal value, or ``@path`` to read it from a file."""
    if value.startswith("@"):
        return Path(value[1:]).read_text().strip()
    return value


def _add_log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="TOML config file (default ./iotguard.toml if present)")
    p.add_argument("--db", metavar="URL", help="database URL (default: the hub's, from the config)")
    p.add_argument(
        "--keys", metavar="DIR", help="software key store holding the log key (default: the hub's)"
    )
    p.add_argument(
        "--origin", default=DEFAULT_ORIGIN, help=f"log origin / key name (default {DEFAULT_ORIGIN})"
    )
    p.add_argument("--key-label", default="audit-log", help="label of the log key in the key store")


def _open_log(args: argparse.Namespace, *, signer: bool) -> TransparencyLog:
    from iotguard.config import load_config
    from iotguard.hub.audit_store import open_audit_log
    from iotguard.hub.db import make_engine
    from iotguard.hub.migrations import migrate

    cfg = load_config(args.config)
    engine = make_engine(args.db or cfg.hub.resolved_database_url())
    migrate(engine)
    keystore: KeyStore | None = None
    if signer:
        if args.keys:
            keystore = SoftwareKeyStore(args.keys)
        else:
            from iotguard.hub.services.lifecycle import open_hub_keys

            keystore = open_hub_keys(cfg.hub)
    return open_audit_log(engine, keystore, args.origin, key_label=args.key_label)


def _cmd_key(args: argparse.Namespace) -> int:
    print(_open_log(args, signer=True).verifier.vkey())
    return 0


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    _out(_open_log(args, signer=True).publish_checkpoint(datetime.now(tz=UTC)), args.output)
    return 0


def _cmd_proof(args: argparse.Namespace) -> int:
    log = _open_log(args, signer=True)
    if args.kind == "inclusion":
        note = log.publish_checkpoint()
        bundle = inclusion_bundle(log, args.a, note)
        _out(json.dumps(bundle.to_dict(), indent=1), args.output)
        return 0
    new = args.b if args.b is not None else log.size()
    proof = log.consistency_proof(args.a, new)
    body = {
        "old_size": args.a,
        "new_size": new,
        "old_checkpoint": log.checkpoint_at(args.a),
        "new_checkpoint": log.checkpoint_at(new),
        "proof": [p.hex() for p in proof],
    }
    _out(json.dumps(body, indent=1), args.output)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    log = _open_log(args, signer=True)
    note = log.publish_checkpoint()
    size = int(note.split("\n", 2)[1])
    end = size if args.end is None else args.end
    bundle = export_segment(log, args.start, end, note, tuple(args.prove_from or ()))
    _out(bundle.to_json(), args.output)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    key = NoteVerifier.from_vkey(_read_arg(args.key))
    raw = Path(args.file).read_bytes()
    try:
        fmt = json.loads(raw).get("format")
    except (ValueError, AttributeError):
        raise MalformedError("not a JSON audit export or proof") from None
    if fmt == EXPORT_FORMAT:
        trusted = Path(args.trusted).read_text() if args.trusted else None
        seg = verify_export(ExportBundle.from_json(raw), key, trusted)
        print(
            f"OK: entries {seg.start}..{seg.start + len(seg.events) - 1} of {seg.checkpoint.origin} "
            f"verified against its checkpoint of size {seg.checkpoint.size}"
        )
        if args.show:
            for i, event in enumerate(seg.events):
                print(json.dumps({"index": seg.start + i, **_event_json(event)}, default=str))
        return 0
    if fmt == ANCHOR_PROOF_FORMAT:
        return verify_anchor_proof_file(args, raw, key)
    if fmt == INCLUSION_FORMAT:
        event = verify_inclusion_bundle(InclusionBundle.from_dict(json.loads(raw)), key)
        print("OK: entry included in the signed checkpoint")
        print(json.dumps(_event_json(event), default=str))
        return 0
    raise MalformedError(f"unknown file format {fmt!r}")


def _event_json(event: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.hex()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return {
        "type": event.type,
        "time": event.time.isoformat(),
        "actor": event.actor,
        "subject": event.subject,
        "details": plain(dict(event.details)),
        "prior": plain(dict(event.prior)),
    }


def _source(args: argparse.Namespace) -> LogSource:
    if args.url:
        from iotguard.hub.audit_api import HttpLogSource

        return HttpLogSource(args.url, args.token, cafile=args.ca)
    return LocalLogSource(_open_log(args, signer=False))


def _cmd_monitor(args: argparse.Namespace) -> int:
    from iotguard.hub.audit_store import FileMonitorState

    monitor = Monitor(NoteVerifier.from_vkey(_read_arg(args.key)))
    store = FileMonitorState(args.state)
    source = _source(args)
    while True:
        result = monitor.poll(source, store.load())
        for alert in result.alerts:
            print(json.dumps({"alert": alert.kind, "message": alert.message}), flush=True)
        if result.ok and result.state is not None:
            store.save(result.state)
            print(
                json.dumps({"ok": True, "size": result.state.compact.size, "new": result.new_entries}),
                flush=True,
            )
        if args.once:
            return 0 if result.ok else EXIT_ALERT
        time.sleep(args.interval)


# -- witness -----------------------------------------------------------------


def _witness(args: argparse.Namespace) -> Witness:
    from iotguard.hub.audit_store import FileWitnessState

    state = Path(args.state)
    keys = SoftwareKeyStore(state / "keys")
    if not keys.has_key(_WITNESS_KEY):
        raise ConfigError(f"no witness key in {state}; run 'iotguard witness init' first")
    signer = NoteSigner(keys, _WITNESS_KEY, args.name, SIG_COSIGNATURE_V1)
    logs = [NoteVerifier.from_vkey(_read_arg(k)) for k in args.log_key]
    return Witness(signer, logs, FileWitnessState(state / "heads.json"))


def _cmd_witness_init(args: argparse.Namespace) -> int:
    keys = SoftwareKeyStore(Path(args.state) / "keys")
    if not keys.has_key(_WITNESS_KEY):
        keys.generate(_WITNESS_KEY, KeyKind.ED25519)
    print(NoteSigner(keys, _WITNESS_KEY, args.name, SIG_COSIGNATURE_V1).verifier.vkey())
    return 0


def _save_cosigned(args: argparse.Namespace, note: str) -> None:
    out = Path(args.state) / "cosigned"
    out.mkdir(parents=True, exist_ok=True)
    size = note.split("\n", 2)[1]
    (out / f"{size}.note").write_text(note)
    (Path(args.state) / "latest.note").write_text(note)


def _cmd_witness_cosign(args: argparse.Namespace) -> int:
    witness = _witness(args)
    proof: list[bytes] = []
    if args.proof:
        proof = [bytes.fromhex(h) for h in json.loads(Path(args.proof).read_text())["proof"]]
    note = witness.cosign(Path(args.checkpoint).read_text(), proof, datetime.now(tz=UTC))
    _save_cosigned(args, note)
    _out(note, None)
    return 0


def _cmd_witness_run(args: argparse.Namespace) -> int:
    from iotguard.hub.audit_api import HttpLogSource

    witness = _witness(args)
    if args.listen:
        return serve_witness(args, witness, [NoteVerifier.from_vkey(_read_arg(k)) for k in args.log_key])
    if not args.url:
        raise ConfigError("witness run needs --listen (serve tlog-witness) or --url (poll a hub)")
    source = HttpLogSource(args.url, args.token, cafile=args.ca)
    while True:
        status = 0
        try:
            note = source.latest_checkpoint()
            origin = note.split("\n", 1)[0]
            last = witness.last_cosigned(origin)
            size = int(note.split("\n", 2)[1])
            proof: list[bytes] = []
            if last is not None and 0 < last.size < size:
                proof = source.consistency_proof(last.size, size)
            cosigned = witness.cosign(note, proof, datetime.now(tz=UTC))
            _save_cosigned(args, cosigned)
            print(json.dumps({"cosigned": origin, "size": size}), flush=True)
        except (ProofError, MalformedError) as exc:
            print(json.dumps({"alert": exc.code, "message": str(exc)}), flush=True)
            status = EXIT_ALERT
        if args.once:
            return status
        time.sleep(args.interval)


def register(subparsers: Any) -> None:
    """Add the ``audit`` and ``witness`` command groups."""
    audit = subparsers.add_parser(
        "audit", help="tamper-evident audit log: checkpoints, proofs, verify, monitor"
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    p = sub.add_parser("key", help="print the log's verifier key (give it to auditors)")
    _add_log_options(p)
    p.set_defaults(func=_cmd_key)

    p = sub.add_parser("checkpoint", help="publish a signed checkpoint of the log now and print it")
    _add_log_options(p)
    p.add_argument("-o", "--output", help="write to this file")
    p.set_defaults(func=_cmd_checkpoint)

    p = sub.add_parser("proof", help="inclusion proof of an entry, or consistency proof between sizes")
    _add_log_options(p)
    p.add_argument("kind", choices=["inclusion", "consistency"])
    p.add_argument("a", type=int, metavar="INDEX|OLD_SIZE")
    p.add_argument("b", type=int, nargs="?", metavar="NEW_SIZE")
    p.add_argument("-o", "--output", help="write to this file")
    p.set_defaults(func=_cmd_proof)

    p = sub.add_parser("export", help="export a log segment with its checkpoint and proofs")
    _add_log_options(p)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--end", type=int, help="one past the last entry (default: the whole log)")
    p.add_argument(
        "--prove-from", type=int, action="append", metavar="SIZE", help="add a proof from this size"
    )
    p.add_argument("-o", "--output", help="write to this file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "verify", help="verify an export, inclusion proof or anchor proof offline with only the log key"
    )
    p.add_argument("file", help="export (audit export), inclusion proof (audit proof inclusion) or anchor-proof")
    p.add_argument("--key", required=True, help="the log's verifier key, or @FILE")
    p.add_argument("--trusted", metavar="CHECKPOINT", help="a checkpoint seen earlier; refuse rollback/fork")
    p.add_argument("--show", action="store_true", help="print the verified events")
    add_verify_options(p)
    p.set_defaults(func=_cmd_verify)

    register_chain(sub, _add_log_options, _open_log)
    register_cosign(sub, _add_log_options, _open_log)

    p = sub.add_parser("monitor", help="follow a live log and alert on any inconsistency")
    _add_log_options(p)
    p.add_argument("--url", help="hub API URL (otherwise read the database)")
    p.add_argument("--token", help="operator API token for --url")
    p.add_argument("--ca", metavar="FILE", help="CA certificate of the hub's HTTPS (its <data_dir>/fleet-ca.pem)")
    p.add_argument("--key", required=True, help="the log's verifier key, or @FILE")
    p.add_argument(
        "--state", required=True, metavar="FILE", help="where the last verified checkpoint is kept"
    )
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--once", action="store_true", help=f"poll once; exit {EXIT_ALERT} on an alert")
    p.set_defaults(func=_cmd_monitor)

    witness = subparsers.add_parser("witness", help="independent witness that cosigns consistent checkpoints")
    wsub = witness.add_subparsers(dest="witness_command", metavar="ACTION", required=True)
    for name, func, text in (
        ("init", _cmd_witness_init, "create the witness key and print its verifier key"),
        ("cosign", _cmd_witness_cosign, "verify and cosign one checkpoint file"),
        ("run", _cmd_witness_run, "serve tlog-witness over HTTPS (--listen), or poll a hub's log (--url)"),
    ):
        p = wsub.add_parser(name, help=text)
        p.add_argument("--state", required=True, metavar="DIR", help="witness state directory (key, heads)")
        p.add_argument("--name", required=True, help="witness name, e.g. witness.example.org/w1")
        if name != "init":
            p.add_argument(
                "--log-key", action="append", required=True, help="verifier key of a log, or @FILE"
            )
        if name == "cosign":
            p.add_argument("--checkpoint", required=True, metavar="FILE")
            p.add_argument("--proof", metavar="FILE", help="consistency proof JSON (audit proof consistency)")
        if name == "run":
            add_listen_options(p)
            p.add_argument("--url", help="poll this hub's log instead of serving")
            p.add_argument("--token")
            p.add_argument("--ca", metavar="FILE",
                           help="CA certificate of the hub's HTTPS (its <data_dir>/fleet-ca.pem)")
            p.add_argument("--interval", type=float, default=30.0)
            p.add_argument("--once", action="store_true")
        p.set_defaults(func=func)
