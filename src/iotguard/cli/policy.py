"""``iotguard policy``: validate, test, diff, activate, explain, show, acl."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotguard.errors import ConfigError
from iotguard.policy import (
    AccessRequest,
    CaseResult,
    PolicyAdministration,
    PolicyEngine,
    PolicySchema,
    PolicySet,
    PolicyValidationError,
    PostureStore,
    default_policy_set,
    default_schema,
    diff_policy_sets,
    posture_from_spec,
    render_mosquitto_acl,
    run_case_file,
    shipped_case_files,
    validate,
)

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``iotguard policy`` and its sub-commands."""
    p = sub.add_parser("policy", help="zero-trust policy: validate, test, diff, activate, explain, acl")
    p.add_argument("--database-url", help="hub database URL (default: from the hub config)")
    p.add_argument("--config", metavar="PATH", help="TOML config file used to find the hub database")
    s = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    v = s.add_parser("validate", help="check policy files against the schema")
    v.add_argument("files", nargs="*", type=Path, help="Cedar policy files (default: shipped policies)")
    v.add_argument("--schema", type=Path, help="Cedar schema file (default: shipped schema)")
    v.set_defaults(func=cmd_validate)

    t = s.add_parser("test", help="run policy test cases (request -> expected decision)")
    t.add_argument("cases", nargs="*", type=Path, help="case files or directories (default: shipped cases)")
    t.add_argument("--policies", type=Path, help="policy file to test (default: shipped policies)")
    t.add_argument("--schema", type=Path)
    t.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    t.set_defaults(func=cmd_test)

    d = s.add_parser("diff", help="policy-level diff; OLD/NEW are files, 'default' or stored 'vN'")
    d.add_argument("old")
    d.add_argument("new")
    d.set_defaults(func=cmd_diff)

    a = s.add_parser("activate", help="validate, store and activate a policy file (or a stored version)")
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("file", nargs="?", type=Path)
    g.add_argument("--version", type=int, help="re-activate a stored version (rollback)")
    a.add_argument("--actor", default=os.environ.get("USER", "cli"))
    a.add_argument("--comment", default="")
    a.add_argument("--schema", type=Path)
    a.set_defaults(func=cmd_activate)

    e = s.add_parser("explain", help="decide one request and say which policies allowed or denied it")
    e.add_argument("--principal", required=True, help="Device::ID or Operator::NAME")
    e.add_argument("--role", default="", help="operator role")
    e.add_argument("--action", required=True)
    e.add_argument("--resource", required=True, help="Topic::iotguard/..., Device::ID, Hub::hub ...")
    e.add_argument("--policies", type=Path, help="policy file (default: active version, else shipped)")
    e.add_argument("--posture", type=Path, help="JSON devices map as in case files (default: database)")
    e.add_argument("--now", help="ISO-8601 decision time (default: now)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_explain)

    sh = s.add_parser("show", help="print the active (or a stored) policy version and history")
    sh.add_argument("--version", type=int)
    sh.add_argument("--history", action="store_true", help="list versions and activations")
    sh.set_defaults(func=cmd_show)

    acl = s.add_parser("acl", help="write a Mosquitto acl_file derived from the policies")
    acl.add_argument("--out", type=Path, required=True)
    acl.add_argument("--policies", type=Path)
    acl.add_argument("--posture", type=Path, help="JSON devices map (default: database)")
    acl.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="USER:ACCESS:TOPIC",
        help="extra broker account grant, e.g. hub:readwrite:iotguard/#",
    )
    acl.set_defaults(func=cmd_acl)


# ----------------------------------------------------------------- helpers


def _schema(path: Path | None) -> PolicySchema:
    return PolicySchema(path.read_text(encoding="utf-8")) if path else default_schema()


def _read_policies(path: Path) -> PolicySet:
    try:
        return PolicySet(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    from iotguard.config import load_config

    return load_config(args.config).hub.resolved_database_url()


def _admin(args: argparse.Namespace, schema: PolicySchema | None = None) -> PolicyAdministration:
    from iotguard.clock import SystemClock
    from iotguard.hub.db import make_engine
    from iotguard.hub.migrations import migrate
    from iotguard.hub.outbox import SqlOutboxStore
    from iotguard.hub.policy_store import SqlPolicyRepository
    from iotguard.hub.services.posture import OutboxPolicyAudit

    engine = make_engine(_database_url(args))
    migrate(engine)
    # Proposals and activations are audit events, queued like the hub's and appended by _deliver.
    return PolicyAdministration(SqlPolicyRepository(engine), schema=schema,
                                audit=OutboxPolicyAudit(SqlOutboxStore(engine), SystemClock()))


def _deliver(admin: PolicyAdministration) -> None:
    """Append the audit events the command queued (the hub signs the next checkpoint over them)."""
    from iotguard.audit import TransparencyLog
    from iotguard.hub.audit_store import SqlLogStore
    from iotguard.hub.outbox import OutboxDrainer, SqlOutboxStore
    from iotguard.hub.policy_store import SqlPolicyRepository
    from iotguard.hub.services.audit import AuditDelivery

    repo = admin.repository
    if isinstance(repo, SqlPolicyRepository):
        engine = repo.engine
        OutboxDrainer(SqlOutboxStore(engine), [AuditDelivery(TransparencyLog(SqlLogStore(engine)))],
                      worker="cli").drain()


def _posture(args: argparse.Namespace, now: datetime) -> PostureStore:
    if args.posture:
        raw: dict[str, dict[str, Any]] = json.loads(args.posture.read_text(encoding="utf-8"))
        return PostureStore(posture_from_spec(d, spec, now) for d, spec in raw.items())
    from iotguard.hub.db import make_engine
    from iotguard.hub.policy_store import load_posture

    return load_posture(make_engine(_database_url(args)))


def _policies(args: argparse.Namespace) -> tuple[PolicySet, int]:
    if args.policies:
        return _read_policies(args.policies), 0
    if args.database_url or args.config:
        stored = _admin(args).repository.active_version()
        if stored is not None:
            return stored.policy_set, stored.version
    return default_policy_set(), 0


def _entity(ref: str) -> tuple[str, str]:
    kind, sep, ident = ref.partition("::")
    if not sep:
        raise ConfigError(f"{ref!r} is not Type::id")
    return kind, ident.strip('"')


def _resolve(args: argparse.Namespace, ref: str) -> PolicySet:
    if ref == "default":
        return default_policy_set()
    if ref.startswith("v") and ref[1:].isdigit():
        return _admin(args).repository.get_version(int(ref[1:])).policy_set
    return _read_policies(Path(ref))


# ---------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate policy files; exit 1 on the first invalid one."""
    schema = _schema(args.schema)
    targets = [(str(f), _read_policies(f)) for f in args.files] or [("default", default_policy_set())]
    status = 0
    for name, policy_set in targets:
        try:
            validate(policy_set, schema)
        except PolicyValidationError as exc:
            status = 1
            print(f"{name}: INVALID")
            for err in exc.errors or [str(exc)]:
                print(f"  {err}")
            continue
        print(f"{name}: ok ({len(policy_set.policies)} policies, sha256 {policy_set.digest[:16]})")
    return status


def cmd_test(args: argparse.Namespace) -> int:
    """Run case files; exit 1 if any case fails."""
    policy_set = _read_policies(args.policies) if args.policies else default_policy_set()
    schema = _schema(args.schema)
    validate(policy_set, schema)
    files: list[Path] = []
    for target in args.cases:
        files.extend(sorted(target.glob("*.json")) if target.is_dir() else [target])
    files = files or shipped_case_files()
    results: list[CaseResult] = []
    for f in files:
        results.extend(run_case_file(f, policy_set, schema))
    failed = [r for r in results if not r.passed]
    for r in results:
        if not r.passed:
            print(f"FAIL {r.file}::{r.name}: {r.message}")
        elif args.verbose:
            print(f"ok   {r.file}::{r.name} -> {r.decision.summary()}")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed ({len(files)} files)")
    return 1 if failed else 0


def cmd_diff(args: argparse.Namespace) -> int:
    """Print added (+), removed (-) and changed (~) policy ids."""
    diff = diff_policy_sets(_resolve(args, args.old), _resolve(args, args.new))
    print(diff.render())
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    """Validate, store and activate; the engine of each hub loads it on its next refresh."""
    admin = _admin(args, _schema(args.schema))
    if args.version is not None:
        act = admin.activate(args.version, actor=args.actor)
    else:
        policy_set = _read_policies(args.file)
        previous = admin.repository.active_version()
        if previous is not None:
            print(diff_policy_sets(previous.policy_set, policy_set).render())
        act = admin.propose_and_activate(policy_set, author=args.actor, comment=args.comment)
    _deliver(admin)
    print(f"policy version {act.version} active (previous: {act.previous or '-'})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain one decision; exit 0 when allowed, 3 when denied."""
    now = datetime.fromisoformat(args.now) if args.now else datetime.now(tz=UTC)
    if now.tzinfo is None:
        raise ConfigError("--now must carry a timezone (e.g. 2026-01-01T12:00:00+00:00)")
    policy_set, version = _policies(args)
    engine = PolicyEngine(policy_set, posture=_posture(args, now), policy_version=version)
    p_kind, p_id = _entity(args.principal)
    r_kind, r_id = _entity(args.resource)
    explanation = engine.explain(AccessRequest(p_kind, p_id, args.action, r_kind, r_id, args.role), now=now)
    if args.json:
        d = explanation.decision
        print(
            json.dumps(
                {
                    "allowed": d.allowed,
                    "code": d.code,
                    "reasons": list(d.reasons),
                    "errors": list(d.errors),
                    "matched_permits": list(explanation.matched_permits),
                    "matched_forbids": list(explanation.matched_forbids),
                    "context": explanation.context,
                    "note": explanation.note,
                },
                indent=2,
            )
        )
    else:
        print(explanation.render())
    return 0 if explanation.decision.allowed else 3


def cmd_show(args: argparse.Namespace) -> int:
    """Print a stored version (default: active) or the history."""
    repo = _admin(args).repository
    if args.history:
        for v in repo.versions():
            print(f"v{v.version} {v.created_at.isoformat()} {v.author} sha256:{v.digest[:16]} {v.comment}")
        for a in repo.activations():
            was = f"v{a.previous}" if a.previous else "-"
            print(f"activated v{a.version} (was {was}) by {a.actor} at {a.activated_at.isoformat()}")
        return 0
    stored = repo.get_version(args.version) if args.version else repo.active_version()
    if stored is None:
        print("no policy version is active (the hub denies everything until one is)", file=sys.stderr)
        return 1
    print(f"// version {stored.version}, sha256 {stored.digest}")
    print(stored.text)
    return 0


def cmd_acl(args: argparse.Namespace) -> int:
    """Write the Mosquitto ACL file (atomically) for every device with posture."""
    now = datetime.now(tz=UTC)
    policy_set, version = _policies(args)
    engine = PolicyEngine(policy_set, posture=_posture(args, now), policy_version=version)
    if not engine.loaded:
        raise ConfigError(f"policies do not load: {engine.load_error}")
    services: dict[str, list[tuple[str, str]]] = {}
    for spec in args.service:
        user, _, rest = spec.partition(":")
        access, _, topic = rest.partition(":")
        if not (user and access and topic):
            raise ConfigError(f"--service {spec!r} is not USER:ACCESS:TOPIC")
        services.setdefault(user, []).append((access, topic))
    text = render_mosquitto_acl(engine, service_accounts=services, now=now)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out} for {len(engine.posture)} devices (policy version {version})")
    return 0
