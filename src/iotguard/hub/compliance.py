"""The compliance report built from the hub's live state: facts gathered here, judged by
:mod:`iotguard.compliance`, rendered as JSON, HTML or PDF (drawn by ReportLab from the same document).

Evidence: each check cites its settings and the newest audit entries of the event types it
names, each with an RFC 9162 inclusion proof against a checkpoint signed for the report, so an
auditor verifies every cited entry offline with the log's public key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, select

from iotguard.audit.verify import inclusion_bundle, verify_inclusion_bundle
from iotguard.compliance import CHECKS, Evidence, FleetFacts, evaluate
from iotguard.errors import ConfigError, IotGuardError
from iotguard.hub.audit_store import audit_entries
from iotguard.hub.compose import HubServices
from iotguard.hub.credentials import model_support
from iotguard.hub.schema import devices
from iotguard.privacy import load_contract

__all__ = ["EVIDENCE_PER_EVENT", "gather_facts", "render_html", "render_pdf", "report"]

#: Newest audit entries cited per event type.
EVIDENCE_PER_EVENT = 2


def _audit_evidence(services: HubServices, event_types: Sequence[str], checkpoint: str) -> list[Evidence]:
    log = services.audit.log
    out: list[Evidence] = []
    with services.store.engine.connect() as c:
        for event_type in event_types:
            seqs = [r[0] for r in c.execute(select(audit_entries.c.seq).where(audit_entries.c.event_type == event_type)
                                            .order_by(audit_entries.c.seq.desc()).limit(EVIDENCE_PER_EVENT))]
            for seq in seqs:
                try:
                    bundle = inclusion_bundle(log, int(seq), checkpoint)
                    event = verify_inclusion_bundle(bundle, log.verifier)
                except IotGuardError:
                    continue  # newer than the checkpoint, or does not verify: not cited as evidence
                out.append(Evidence("audit", str(seq), f"{event.type} by {event.actor} about {event.subject} "
                                    f"at {event.time.isoformat()}", bundle.to_dict()))
    return out


def _setting(services: HubServices, name: str) -> Evidence:
    value = getattr(services.cfg, name.removeprefix("hub."))
    return Evidence("config", name, f"{name} = {value!r}")


def gather_facts(services: HubServices) -> FleetFacts:
    """Read the live state a report judges; signs a checkpoint so cited entries carry proofs."""
    cfg, engine = services.cfg, services.store.engine
    log = services.audit.log
    checkpoint = log.publish_checkpoint(services.clock.now())
    try:
        log.verify_checkpoint(checkpoint)
        verified = True
    except IotGuardError:
        verified = False
    with engine.connect() as c:
        by_status = {r[0]: int(r[1]) for r in c.execute(select(devices.c.status, func.count())
                                                        .group_by(devices.c.status))}
        shared = c.execute(select(func.count()).select_from(
            select(devices.c.identity_public_key).where(devices.c.identity_public_key.is_not(None))
            .group_by(devices.c.identity_public_key).having(func.count() > 1).subquery())).scalar_one()
        no_cert = c.execute(select(func.count()).select_from(devices).where(
            devices.c.status == "active", devices.c.cert_pem.is_(None))).scalar_one()
        models = sorted({r[0] for r in c.execute(select(devices.c.model).where(
            devices.c.status.in_(("active", "pending"))).distinct())})
        support = {r[0]: r[1] for r in c.execute(select(model_support.c.model, model_support.c.end_of_support))}
    supported = set(support)
    tiers: dict[str, int] = {}
    for posture in services.posture.posture:
        tiers[posture.trust_tier] = tiers.get(posture.trust_tier, 0) + 1
    without_contract, contracts = [], []
    for model in models:
        try:
            contract = load_contract(model)
            contracts.append(Evidence("state", f"contract:{model}", f"data contract {model} v{contract.version}, "
                                      f"SHA-256 {contract.digest().hex()[:16]}..., purposes "
                                      + ", ".join(f"{n} ({p.legal_basis.value}, {p.retention.days} days)"
                                                  for n, p in contract.purposes.items())))
        except ConfigError:
            without_contract.append(model)
    pending = services.outbox.pending()
    rejected = services.store.rejection_totals()
    state: dict[str, list[Evidence]] = {
        "C-SUPPORT-PERIOD": [Evidence("state", "model_support", f"{m}: supported until {support[m]:%Y-%m-%d}")
                             for m in models if m in support],
        "C-ATTESTATION": [Evidence("state", "device_posture", "active devices by trust tier: "
                                   + (", ".join(f"{t} {n}" for t, n in sorted(tiers.items())) or "none"))],
        "C-TELEMETRY-MINIMISATION": contracts, "C-CONSENT": contracts,
        "C-RESILIENCE": [Evidence("state", "outbox", f"{pending} side effects waiting for delivery")],
        "C-INPUT-VALIDATION": [Evidence("state", "rejections", "rejections by reason: "
                                        + (", ".join(f"{r} {n}" for r, n in sorted(rejected.items())) or "none"))],
        "C-UPDATE-MECHANISM": [Evidence("state", "firmware_files", "TUF root metadata "
                                        + ("present" if services.firmware.file("metadata/1.root.json") else
                                           "absent"))],
    }
    evidence = {}
    for check in CHECKS:
        evidence[check.id] = (*(_setting(services, s) for s in check.settings), *state.get(check.id, ()),
                              *_audit_evidence(services, check.audit_events, checkpoint))
    return FleetFacts(
        generated_at=services.clock.now(), devices_by_status=by_status, shared_identity_keys=int(shared),
        active_without_certificate=int(no_cert), active_trust_tiers=tiers, security_contact=cfg.security_contact,
        unsafe_plain_http=cfg.unsafe_plain_http, unsafe_plaintext_broker=cfg.unsafe_plaintext_broker,
        api_docs=cfg.api_docs, keystore_backend=cfg.keystore_backend, allowed_suites=tuple(cfg.allowed_suites),
        cert_validity_days=cfg.cert_validity_days, enrollment_token_ttl_s=cfg.enrollment_token_ttl_s,
        models=tuple(models), models_without_contract=tuple(without_contract),
        models_without_support_date=tuple(m for m in models if m not in supported),
        firmware_repository=services.firmware.file("metadata/1.root.json") is not None,
        policy_active=services.posture.engine.loaded,
        outbox_pending=pending, audit_size=log.size(), checkpoint_verified=verified,
        rejected_total=rejected, evidence=evidence,
        unsafe_options=tuple(f"hub.{f.name}" for f in dataclasses.fields(cfg)
                             if f.name.startswith("unsafe_") and getattr(cfg, f.name)))


def report(services: HubServices) -> dict[str, Any]:
    """The JSON-ready report for the hub's live state, with the checkpoint its proofs refer to."""
    facts = gather_facts(services)
    out = evaluate(facts)
    out["checkpoint"] = services.audit.log.latest_checkpoint()
    out["log_origin"] = services.audit.log.origin
    return out


def render_html(doc: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (no script; each check links to its evidence)."""
    folder = Path(str(files("iotguard.hub.console").joinpath("templates")))
    env = Environment(loader=FileSystemLoader(folder), autoescape=select_autoescape(default=True))
    return env.get_template("compliance_report.html").render(r=doc)


def render_pdf(doc: dict[str, Any]) -> bytes:
    """The report as PDF, drawn by ReportLab from ``doc`` itself: each check and cited entry a link target.

    ReportLab is imported here, not at module import, so commands that never make a PDF do not load it.
    See :mod:`iotguard.hub.compliance_pdf`.
    """
    from iotguard.hub.compliance_pdf import render_pdf as draw

    return draw(doc)
