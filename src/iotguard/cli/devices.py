"""``iotguard devices``: the device registry (on the hub host)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from iotguard.cli._common import add_config_argument, config_from_args, deliver_effects, open_hub_services, print_json
from iotguard.errors import EnrollmentError

if TYPE_CHECKING:
    from iotguard.hub.compose import HubServices


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("devices", help="add, list, show and revoke devices")
    add_config_argument(p)
    s = p.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    a = s.add_parser("add", help="register a device and print its one-time enrollment code")
    a.add_argument("device_id")
    a.add_argument("--model", required=True, help="device model, e.g. thermo-1")
    a.add_argument("--segment", default="default", help="network segment (default: default)")
    a.add_argument("--serial", help="manufacturer serial number")
    a.set_defaults(func=add)
    ls = s.add_parser("ls", help="list devices")
    ls.add_argument("--status", choices=["pending", "active", "revoked", "decommissioned"])
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(func=list_devices)
    sh = s.add_parser("show", help="show one device with its certificate")
    sh.add_argument("device_id")
    sh.set_defaults(func=show)
    r = s.add_parser("revoke", help="revoke a device: its data is refused from now on")
    r.add_argument("device_id")
    r.add_argument("--reason", default="", help="why (recorded in the audit log)")
    r.set_defaults(func=revoke)
    rp = s.add_parser("reprovision", help="erase a device's keys (old certificate stays revoked) and print a new "
                      "enrollment code")
    rp.add_argument("device_id")
    rp.set_defaults(func=reprovision)
    dc = s.add_parser("decommission", help="retire a device: revoke it and crypto-erase its session keys")
    dc.add_argument("device_id")
    dc.set_defaults(func=decommission_device)
    po = s.add_parser("posture", help="trust tier, attestation time and quarantine of one device or all")
    po.add_argument("device_id", nargs="?")
    po.add_argument("--json", action="store_true", help="JSON output")
    po.set_defaults(func=posture)
    pv = s.add_parser("provenance", help="a device's chain of custody from the audit log, with inclusion proofs")
    pv.add_argument("device_id")
    pv.add_argument("--json", action="store_true", help="JSON output")
    pv.add_argument("--parties", metavar="FILE",
                    help="also verify the party-signed custody chain (default hub.custody_parties_file)")
    pv.set_defaults(func=provenance)


def _open(args: argparse.Namespace) -> HubServices:
    return open_hub_services(config_from_args(args).hub)


def add(args: argparse.Namespace) -> int:
    services = _open(args)
    code = services.lifecycle.add_device(args.device_id, args.model, segment=args.segment, serial=args.serial,
                                         actor="cli")
    deliver_effects(services)
    print(f"device {args.device_id} registered; enrollment code (shown once, valid "
          f"{services.cfg.enrollment_token_ttl_s // 3600} h):")
    print(code)
    return 0


def list_devices(args: argparse.Namespace) -> int:
    store = _open(args).store
    devices = store.list_devices(status=args.status)
    if args.json:
        print_json([d.to_dict() for d in devices])
        return 0
    print(f"{'DEVICE':<32} {'MODEL':<12} {'SEGMENT':<12} {'STATUS':<10} EPOCH")
    for d in devices:
        print(f"{d.device_id:<32} {d.model:<12} {d.segment:<12} {d.status:<10} {d.current_epoch or '-'}")
    return 0


def show(args: argparse.Namespace) -> int:
    services = _open(args)
    d = services.store.get_device(args.device_id)
    print_json({**d.to_dict(), "readings": services.telemetry.reading_count(d.device_id),
                "certificate_pem": d.cert_pem})
    return 0


def revoke(args: argparse.Namespace) -> int:
    services = _open(args)
    services.lifecycle.revoke(args.device_id, actor="cli", reason=args.reason)
    deliver_effects(services)
    print(f"device {args.device_id} revoked")
    return 0


def reprovision(args: argparse.Namespace) -> int:
    services = _open(args)
    code = services.lifecycle.reprovision(args.device_id, actor="cli")
    deliver_effects(services)
    print(f"device {args.device_id} reset for enrollment; new one-time code:")
    print(code)
    return 0


def decommission_device(args: argparse.Namespace) -> int:
    services = _open(args)
    result = services.lifecycle.decommission(args.device_id, actor="cli")
    deliver_effects(services)
    print(f"device {args.device_id} decommissioned; session keys of epochs {list(result.erased_epochs)} erased")
    return 0


def provenance(args: argparse.Namespace) -> int:
    from iotguard.audit.provenance import provenance as chain_of_custody
    from iotguard.audit.provenance import verify_chain_of_custody

    services = _open(args)
    log = services.audit.log
    chain = chain_of_custody(log, args.device_id)
    events = verify_chain_of_custody(chain, log.verifier)
    rows = [{"index": link.index, "type": link.event.type, "time": link.event.time.isoformat(),
             "actor": link.event.actor, "inclusion_proof_hashes": len(link.bundle.proof)}
            for link in chain.links]
    custody = _signed_custody(args, services, events)
    if args.json:
        print_json({"device_id": args.device_id, "checkpoint": chain.checkpoint, "events": rows,
                    "log_key": log.verifier.vkey(), "verified": True, "custody": custody})
        return 0
    print(f"chain of custody of {args.device_id} ({len(rows)} events, every inclusion proof verified "
          f"against the signed checkpoint):")
    for r in rows:
        print(f"  #{r['index']:<8} {r['time']}  {r['type']:<22} by {r['actor']}")
    if custody is not None:
        print("signed custody (every COSE signature verified against the trusted parties, linked in order):")
        for c in custody:
            print(f"  {c['role']:<13} {c['party']} -> {c['next'] or '(fleet)'}")
    return 0


def _signed_custody(args: argparse.Namespace, services: HubServices,
                    events: list[Any]) -> list[dict[str, Any]] | None:
    """Verify the party-signed custody statements when trusted parties are configured."""
    from iotguard.audit.custody import statements_from_events, verify_custody_chain
    from iotguard.hub.custody_gate import load_custody_parties

    parties = getattr(args, "parties", None) or config_from_args(args).hub.custody_parties_file
    if not parties:
        return None
    identity = services.store.get_device(args.device_id).identity_public_key
    if identity is None:
        raise EnrollmentError("device has not enrolled: no identity key to check its custody against")
    chain = verify_custody_chain(statements_from_events(events), args.device_id, identity,
                                 load_custody_parties(parties))
    return [{"party": s.party, "role": s.role.value, "next": s.next_party, "time": s.time.isoformat()}
            for s in chain]


def posture(args: argparse.Namespace) -> int:
    from iotguard.hub.policy_store import load_posture

    services = _open(args)
    found = [p for p in load_posture(services.store.engine)
             if args.device_id is None or p.device_id == args.device_id]
    if args.device_id is not None and not found:
        print(f"no posture for {args.device_id} (not an active device)")
        return 1
    rows = []
    for p in sorted(found, key=lambda p: p.device_id):
        last = services.attestation.history(p.device_id, limit=1)
        rows.append({"device_id": p.device_id, "model": p.model, "segment": p.effective_segment,
                     "trust_tier": p.trust_tier, "quarantined": p.quarantined,
                     "attested_at": p.attested_at.isoformat() if p.attested_at else None,
                     "last_appraisal": last[0].status if last else None,
                     "reasons": list(last[0].reasons) if last else []})
    if args.json:
        print_json(rows)
        return 0
    print(f"{'DEVICE':<24} {'TIER':<11} {'SEGMENT':<12} {'LAST APPRAISAL':<16} ATTESTED AT")
    for r in rows:
        print(f"{r['device_id']:<24} {r['trust_tier']:<11} {r['segment']:<12} {r['last_appraisal'] or '-':<16} "
              f"{r['attested_at'] or '-'}")
    return 0
