"""``iotguard audit cosign`` (k-of-n witness cosignatures) and the HTTPS server of ``iotguard witness run --listen``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotguard.audit.events import AuditEvent
from iotguard.audit.monitor import AlertKind
from iotguard.audit.note import NoteVerifier
from iotguard.audit.witness import Witness
from iotguard.audit.witness_protocol import CosignOutcome, QuorumNotMet, collect_cosignatures
from iotguard.errors import ConfigError

__all__ = ["add_listen_options", "register_cosign", "serve_witness"]


def _read_arg(value: str) -> str:
    return Path(value[1:]).read_text().strip() if value.startswith("@") else value


def add_listen_options(p: argparse.ArgumentParser) -> None:
    """Options of ``witness run`` for serving the tlog-witness protocol."""
    p.add_argument("--listen", metavar="HOST:PORT", help="serve POST /add-checkpoint over HTTPS here")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (default: self-signed in the state dir)")
    p.add_argument("--tls-key", metavar="PEM", help="key of --tls-cert")


def serve_witness(args: argparse.Namespace, witness: Witness, logs: list[NoteVerifier]) -> int:
    """Serve the witness over HTTPS until interrupted."""
    import uvicorn

    from iotguard.hub.witness_server import ensure_self_signed_certificate, make_witness_app

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--listen must be HOST:PORT")
    state = Path(args.state)
    if args.tls_cert and args.tls_key:
        cert, key = Path(args.tls_cert), Path(args.tls_key)
    elif args.tls_cert or args.tls_key:
        raise ConfigError("--tls-cert and --tls-key go together")
    else:
        cert, key = ensure_self_signed_certificate(state, [host])
    print(json.dumps({"listening": f"https://{host}:{port}", "certificate": str(cert)}), flush=True)
    uvicorn.run(
        make_witness_app(witness, logs, state),
        host=host,
        port=int(port),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="warning",
    )
    return 0


def _cmd_cosign(args: argparse.Namespace, open_log: Callable[..., Any]) -> int:
    from iotguard.hub.witness_server import HttpWitness

    if not args.witness:
        raise ConfigError("name at least one --witness URL")
    keys = args.witness_key or []
    cas = args.witness_ca or []
    if len(keys) != len(args.witness) or len(cas) not in (0, len(args.witness)):
        raise ConfigError("give one --witness-key (and one --witness-ca, if any) per --witness, in order")
    log = open_log(args, signer=True)
    note = log.publish_checkpoint(datetime.now(tz=UTC))
    witnesses = [
        HttpWitness(url, NoteVerifier.from_vkey(_read_arg(k)), log.consistency_proof, ca_file=cas[i] if cas else None)
        for i, (url, k) in enumerate(zip(args.witness, keys, strict=True))
    ]
    sizes_path = Path(args.sizes) if args.sizes else None
    sizes: dict[str, int] = json.loads(sizes_path.read_text()) if sizes_path and sizes_path.exists() else {}
    try:
        result = collect_cosignatures(note, log.verifier, witnesses, args.quorum, sizes)
    except QuorumNotMet as exc:
        _report(log, note, exc.outcomes)
        raise
    finally:
        if sizes_path:
            sizes_path.write_text(json.dumps(sizes))
    _report(log, note, result.outcomes)
    if args.output:
        Path(args.output).write_text(result.note)
    else:
        print(result.note, end="")
    return 0


def _report(log: Any, note: str, outcomes: tuple[CosignOutcome, ...]) -> None:
    """Print each witness's outcome; a reported split view becomes an audit event and an alert."""
    for o in outcomes:
        print(json.dumps({"witness": o.witness, "ok": o.ok, "reason": o.reason}), file=sys.stderr, flush=True)
    reporters = [o.witness for o in outcomes if o.reason == AlertKind.SPLIT_VIEW]
    if reporters:
        size = int(note.split("\n", 2)[1])
        log.record(AuditEvent("log.split_view_reported", datetime.now(tz=UTC), "audit.cosign", log.origin,
                              {"size": size, "witnesses": reporters, "checkpoint": note}))
        print(json.dumps({"alert": AlertKind.SPLIT_VIEW, "witnesses": reporters, "size": size}), flush=True)


def register_cosign(sub: Any, add_log_options: Callable[[argparse.ArgumentParser], None],
                    open_log: Callable[..., Any]) -> None:
    """Add ``audit cosign`` to the ``audit`` group."""
    p = sub.add_parser(
        "cosign", help="publish a checkpoint and make it final with k of n witness cosignatures (tlog-witness)"
    )
    add_log_options(p)
    p.add_argument("--witness", action="append", metavar="URL", help="a witness's https URL (repeat)")
    p.add_argument("--witness-key", action="append", metavar="VKEY", help="its cosignature key, or @FILE (repeat)")
    p.add_argument("--witness-ca", action="append", metavar="PEM", help="its TLS certificate to pin (repeat)")
    p.add_argument("--quorum", type=int, required=True, metavar="K", help="cosignatures needed for a final checkpoint")
    p.add_argument("--sizes", metavar="FILE", help="remembers each witness's last cosigned size between runs")
    p.add_argument("-o", "--output", help="write the final cosigned checkpoint here")
    p.set_defaults(func=lambda a: _cmd_cosign(a, open_log))
