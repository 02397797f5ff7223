"""``iotguard privacy ...`` and ``iotguard export``: notices, consent, access, erasure, retention, sharing."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotguard.cli._common import add_config_argument, print_json
from iotguard.errors import ConfigError, MalformedError

__all__ = ["register"]

#: Largest records file ``iotguard export --records`` reads.
MAX_RECORDS_BYTES = 64 * 1024 * 1024


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _db_args(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument("--database-url", metavar="URL", help="hub database (default: from the config)")


def _database_url(args: argparse.Namespace) -> str:
    if getattr(args, "database_url", None):
        return str(args.database_url)
    from iotguard.config import load_config

    return load_config(args.config).hub.resolved_database_url()


def _engine(args: argparse.Namespace) -> Any:
    from iotguard.hub.db import make_engine
    from iotguard.hub.migrations import migrate

    engine = make_engine(_database_url(args))
    migrate(engine)
    return engine


def _services(args: argparse.Namespace) -> Any:
    """The hub's services (its key store seals and opens subject data, ADR 0405), on ``--database-url``."""
    from iotguard.config import load_config
    from iotguard.hub.compose import build_hub_services

    return build_hub_services(load_config(args.config).hub, database_url=getattr(args, "database_url", None))


def _store(args: argparse.Namespace) -> Any:
    # Audit events go through the outbox like the hub's; _deliver appends them.
    return _services(args).consent.privacy


def _reader(args: argparse.Namespace) -> Any:
    """The CLI's operator, as Cedar sees it: ``cli:<login>`` holding ``--role``."""
    import getpass

    from iotguard.hub.services.data_access import Reader

    return Reader(f"cli:{getpass.getuser()}", args.role, "cli")


#: Format of an access export written to a file: sealed under the subject's data key.
SEALED_EXPORT_FORMAT = "iotguard-sealed-subject-export/1"


def _deliver(engine: Any) -> None:
    """Append the audit events this command queued (the hub signs the next checkpoint over them).

    Consent pushes stay queued: a hub process connected to the broker sends them.
    """
    from iotguard.audit import TransparencyLog
    from iotguard.hub.audit_store import SqlLogStore
    from iotguard.hub.outbox import OutboxDrainer, SqlOutboxStore
    from iotguard.hub.services.audit import AuditDelivery

    OutboxDrainer(SqlOutboxStore(engine), [AuditDelivery(TransparencyLog(SqlLogStore(engine)))], worker="cli").drain()


def _contract_for_device(engine: Any, device_id: str) -> Any:
    from sqlalchemy import select

    from iotguard.hub.schema import devices
    from iotguard.privacy import load_contract

    with engine.connect() as c:
        model = c.execute(select(devices.c.model).where(devices.c.device_id == device_id)).scalar()
    return load_contract(model) if model else None


# -- handlers --------------------------------------------------------------------


def _notice(args: argparse.Namespace) -> int:
    from iotguard.privacy import load_contract, parse_contract, render_notice

    if args.file:
        # An operator previewing a contract they are writing: a file they name
        # on their own command line, never a name that arrived over the API.
        path = Path(args.file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read contract file {str(path)!r}: {exc}") from None
        contract = parse_contract(text, source=str(path))
    elif args.model:
        contract = load_contract(args.model)
    else:
        raise ConfigError("give a device model or --file PATH")
    support = _device_support(args, contract.model) if getattr(args, "with_support", False) else None
    if args.json:
        print_json(contract.to_dict())
    else:
        print(render_notice(contract, support))
    return 0


def _device_support(args: argparse.Namespace, model: str) -> Any:
    """End of support and disclosure contact of ``model``'s newest release in the hub's firmware repository."""
    from iotguard.cli._common import config_from_args, open_hub_services
    from iotguard.privacy.notice import DeviceSupport

    services = open_hub_services(config_from_args(args).hub)
    newest = [r for r in services.firmware.lifecycle_facts() if r.model == model]
    if not newest:
        raise ConfigError(f"the hub has published no firmware release of {model}")
    return DeviceSupport(newest[0].end_of_support, newest[0].disclosure_contact, newest[0].version)


def _models(args: argparse.Namespace) -> int:
    from iotguard.privacy import available_models, load_contract

    for m in available_models():
        c = load_contract(m)
        print(f"{m:12} v{c.version}  {', '.join(sorted(c.purposes))}")
    return 0


def _link(args: argparse.Namespace) -> int:
    store = _store(args)
    store.link_device(args.subject, args.device, _now())
    print(f"{args.device} now belongs to {args.subject}")
    return 0


def _consent_change(args: argparse.Namespace, granted: bool) -> int:
    store = _store(args)
    contract = None
    for d in store.devices_of(args.subject):
        c = _contract_for_device(store.engine, d)
        if c is not None and args.purpose in c.purposes:
            contract = c
            break
    if contract is None and not args.force:
        raise ConfigError(
            f"no device of {args.subject!r} declares purpose {args.purpose!r} (use --force to record anyway)"
        )
    from iotguard.hub.services.consent import consent_push_message

    state = store.set_consent(args.subject, args.purpose, granted, _now(), actor=args.actor,
                              effects=[consent_push_message(args.subject)])
    _deliver(store.engine)
    verb = "granted" if granted else "withdrawn"
    print(
        f"consent for {args.purpose!r} {verb} (version {state.version}); configuration queued for "
        f"{len(store.devices_of(args.subject))} device(s) (a running hub pushes it)"
    )
    return 0


def _consent_ls(args: argparse.Namespace) -> int:
    store = _store(args)
    state = store.consent_state(args.subject)
    rows = {p: {"granted": d.granted, "at": d.at.isoformat()} for p, d in sorted(state.decisions.items())}
    if args.json:
        print_json(
            {
                "subject": args.subject,
                "version": state.version,
                "purposes": rows,
                "devices": store.devices_of(args.subject),
            }
        )
        return 0
    devs = ", ".join(store.devices_of(args.subject))
    print(f"subject {args.subject}  version {state.version}  devices: {devs}")
    for p, r in rows.items():
        print(f"  {p:20} {'granted' if r['granted'] else 'withdrawn':10} {r['at']}")
    if not rows:
        print("  (no decisions recorded)")
    return 0


def _access(args: argparse.Namespace) -> int:
    import base64

    services = _services(args)
    doc = services.data_access.export_subject(_reader(args), args.subject)
    _deliver(services.store.engine)
    text = json.dumps(doc, indent=1, sort_keys=True)
    if args.out:
        # A copy the hub cannot reach later: sealed under the subject's data key, unreadable once erased.
        sealed = services.consent.privacy.seal_for_subject(args.subject, text.encode(), _now())
        Path(args.out).write_text(json.dumps({"format": SEALED_EXPORT_FORMAT,
                                              "sealed": base64.b64encode(sealed).decode()}) + "\n",
                                  encoding="utf-8")
        print(f"wrote {args.out} (sealed for the subject; open it with `iotguard privacy open-export`): "
              f"{len(doc['readings'])} readings, {len(doc['privacy_receipts'])} receipts")
    else:
        print(text)
    return 0


def _open_export(args: argparse.Namespace) -> int:
    import base64
    import binascii

    path = Path(args.file)
    if path.stat().st_size > MAX_RECORDS_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_RECORDS_BYTES} bytes")
    try:
        envelope = json.loads(path.read_text(encoding="utf-8"))
        if envelope.get("format") != SEALED_EXPORT_FORMAT:
            raise MalformedError(f"{path} is not a sealed subject export")
        sealed = base64.b64decode(envelope["sealed"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise MalformedError(f"{path} is not a sealed subject export") from None
    print(_store(args).open_for_subject(args.subject, sealed).decode())
    return 0


def _erase(args: argparse.Namespace) -> int:
    if not args.yes:
        raise ConfigError("erasure cannot be undone; repeat with --yes")
    store = _store(args)
    record = store.erase_subject(args.subject, _now(), actor=args.actor)
    _deliver(store.engine)
    print_json(record.to_dict())
    return 0


def _seal_readings(args: argparse.Namespace) -> int:
    services = _services(args)
    total = 0
    while n := services.store.seal_clear_readings(_now()) + services.consent.privacy.seal_clear_receipts(_now()):
        total += n
    print(f"sealed {total} readings and receipts; on PostgreSQL run VACUUM on tables readings and "
          "privacy_receipts to drop the clear row versions")
    return 0


def _retention(args: argparse.Namespace) -> int:
    from iotguard.hub.privacy_store import enforce_retention

    store = _store(args)
    report = enforce_retention(store.engine, _now(), audit=store.audit, telemetry=store.telemetry)
    _deliver(store.engine)
    print_json(
        {
            "deleted": dict(report.deleted),
            "unclassified": report.unclassified_deleted,
            "receipts": report.receipts_deleted,
            "total": report.total,
        }
    )
    return 0


# -- export --------------------------------------------------------------------------


def _read_records(path: Path) -> list[dict[str, Any]]:
    if path.stat().st_size > MAX_RECORDS_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_RECORDS_BYTES} bytes")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        rows = data.get("records") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise MalformedError("records JSON must be a list of objects (or {'records': [...]})")
        return rows
    out: list[dict[str, Any]] = []
    for row in csv.DictReader(text.splitlines()):
        out.append({k: _maybe_number(v) for k, v in row.items()})
    return out


def _maybe_number(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def _hub_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per stored reading the purpose allows (ADR 0405): device (the data subject, never
    published), model, purpose, hour of day, fields (locations split in lat/lon); in arrival order."""
    import cbor2

    if not args.purpose:
        raise ConfigError("an export from the hub database states its --purpose")
    services = _services(args)
    released = services.data_access.readings_for_export(_reader(args), args.purpose)
    _deliver(services.store.engine)
    models = services.store.device_models()
    out: list[dict[str, Any]] = []
    for r in released:
        device_id, received, body, model = r.device_id, r.received_at, r.body, models.get(r.device_id)
        try:
            obj = cbor2.loads(body)
        except (cbor2.CBORDecodeError, ValueError):
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("f"), dict):
            continue
        row: dict[str, Any] = {"device_id": device_id, "model": model or "", "purpose": obj.get("p") or "",
                               "hour": received.hour}
        for k, v in obj["f"].items():
            if isinstance(v, str) and v.count(",") == 1:
                lat, _, lon = v.partition(",")
                try:
                    row[f"{k}_lat"], row[f"{k}_lon"] = float(lat), float(lon)
                    continue
                except ValueError:
                    pass
            row[k] = v
        out.append(row)
    return out


#: Columns taken as the data subject when ``--subject`` is not given (first present wins).
SUBJECT_COLUMNS = ("subject", "subject_id", "owner", "owner_id", "person", "device_id")


def _export(args: argparse.Namespace) -> int:
    from iotguard.privacy import DIRECT_IDENTIFIERS, check_l_diversity, mondrian, risk_report

    records = _read_records(Path(args.records)) if args.records else _hub_records(args)
    if not records:
        raise ConfigError("no records to export")
    subject = args.subject or next((c for c in SUBJECT_COLUMNS if c in records[0]), None)
    if subject is None:
        raise ConfigError("name the data-subject column with --subject (k and l count people, not rows)")
    direct = DIRECT_IDENTIFIERS | {subject}
    keep = [k.strip() for k in args.keep.split(",") if k.strip()] if args.keep else []
    if args.sensitive and args.sensitive not in keep:
        keep.append(args.sensitive)
    if args.qi:
        qis = [q.strip() for q in args.qi.split(",") if q.strip()]
    else:
        qis = [k for k in records[0] if k not in {*keep, *direct}]
        dropped = [k for k in records[0] if k in direct]
        print(f"direct identifiers dropped: {', '.join(dropped)}", file=sys.stderr)
    usable = [r for r in records if all(r.get(c) not in (None, "") for c in (*qis, *keep, subject))]
    table = mondrian(usable, qis, args.k, keep=keep, sensitive=args.sensitive, l=args.l, subject=subject)
    if args.sensitive and args.l > 1:
        check_l_diversity(table, usable, args.sensitive, args.l)
    report = risk_report(table, usable, sensitive=args.sensitive)
    text = table.to_json() if args.format == "json" else table.to_csv()
    if args.out:
        Path(args.out).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    print(f"quasi-identifiers: {', '.join(qis)}; published: {', '.join(keep) or '(none)'}", file=sys.stderr)
    print(report.render(), file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return 0


# -- registration ------------------------------------------------------------------


def _register_export(sub: Any) -> None:
    p = sub.add_parser("export", help="k-anonymous (Mondrian) extract, k and l over data subjects, shuffled, "
                       "with risk report")
    _db_args(p)
    p.add_argument("--k", type=int, default=10, help="minimum equivalence class size (default 10)")
    p.add_argument("--l", type=int, default=1, help="minimum distinct sensitive values per class")
    p.add_argument("--records", metavar="FILE", help="CSV or JSON records instead of the hub database")
    p.add_argument("--purpose", help="why: only readings collected for this purpose, of devices whose "
                   "contract declares it and whose subject consented (required with the hub database)")
    p.add_argument("--role", default="privacy-officer", help="the operator role Cedar decides for "
                   "(default privacy-officer)")
    p.add_argument("--qi", help="comma-separated quasi-identifiers (default: every column not published and "
                   "not a direct identifier)")
    p.add_argument("--subject", help="column naming each record's data subject; k and l count subjects "
                   f"(default: first of {', '.join(SUBJECT_COLUMNS)}; the hub's is device_id)")
    p.add_argument("--sensitive", help="sensitive column (published, checked for l-diversity)")
    p.add_argument("--keep", help="other columns to publish unchanged")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--out", metavar="FILE", help="write the extract here (default stdout)")
    p.add_argument("--report", metavar="FILE", help="also write the risk report as JSON")
    p.set_defaults(func=_export)


def register(sub: Any) -> None:
    """Add ``privacy`` and ``export`` to the ``iotguard`` parser."""
    p = sub.add_parser("privacy", help="privacy notices, consent, access requests, erasure, retention")
    ps = p.add_subparsers(dest="privacy_command", metavar="ACTION", required=True)

    n = ps.add_parser("notice", help="plain-language notice of what a device model collects")
    n.add_argument("model", nargs="?", help="device model with a known contract (e.g. thermo-1)")
    n.add_argument("--file", metavar="PATH", help="preview a contract .toml file instead")
    n.add_argument("--json", action="store_true", help="print the normalised contract instead")
    n.add_argument("--with-support", action="store_true",
                   help="add the end-of-support date and disclosure contact from the model's newest signed "
                   "firmware release in the hub (--config)")
    add_config_argument(n)
    n.set_defaults(func=_notice)

    m = ps.add_parser("models", help="device models with a shipped data contract")
    m.set_defaults(func=_models)

    lk = ps.add_parser("link", help="record who owns a device (the data subject)")
    _db_args(lk)
    lk.add_argument("--subject", required=True)
    lk.add_argument("--device", required=True)
    lk.set_defaults(func=_link)

    c = ps.add_parser("consent", help="grant, withdraw or list consent")
    cs = c.add_subparsers(dest="consent_command", metavar="ACTION", required=True)
    for name, granted in (("grant", True), ("withdraw", False)):
        g = cs.add_parser(name, help=f"{name} consent for a purpose")
        _db_args(g)
        g.add_argument("--subject", required=True)
        g.add_argument("--purpose", required=True)
        g.add_argument("--actor", default="cli", help="who made the change (audit log)")
        g.add_argument("--force", action="store_true", help="record even if no device declares the purpose")
        g.set_defaults(func=lambda a, granted=granted: _consent_change(a, granted))
    ls = cs.add_parser("ls", help="list a subject's consent decisions")
    _db_args(ls)
    ls.add_argument("--subject", required=True)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_consent_ls)

    a = ps.add_parser("access", help="export everything held about a subject (JSON)")
    _db_args(a)
    a.add_argument("--subject", required=True)
    a.add_argument("--out", metavar="FILE", help="write it sealed under the subject's data key")
    a.add_argument("--role", default="privacy-officer", help="the operator role Cedar decides for")
    a.set_defaults(func=_access)

    o = ps.add_parser("open-export", help="decrypt an access export written with --out (until the subject "
                      "is erased)")
    _db_args(o)
    o.add_argument("file")
    o.add_argument("--subject", required=True)
    o.set_defaults(func=_open_export)

    sr = ps.add_parser("seal-readings", help="encrypt readings stored clear before migration 0311 now")
    _db_args(sr)
    sr.set_defaults(func=_seal_readings)

    e = ps.add_parser("erase", help="erase everything held about a subject")
    _db_args(e)
    e.add_argument("--subject", required=True)
    e.add_argument("--actor", default="cli")
    e.add_argument("--yes", action="store_true", help="confirm")
    e.set_defaults(func=_erase)

    r = ps.add_parser("retention", help="delete readings past their purpose's retention period now")
    _db_args(r)
    r.set_defaults(func=_retention)

    _register_export(sub)
