"""Compliance checks over a snapshot of the fleet's live state, and the standards they answer.

The hub gathers :class:`FleetFacts` (its database, configuration and audit log); this module
only judges them (no I/O). Each :class:`Check` yields pass, fail or not applicable with the
reason and a remediation hint; each standard's requirement (ETSI EN 303 645 provisions 5.1-5.13
and 6, NIST IR 8259A device cybersecurity capabilities, OWASP IoT Top 10 2018) is answered by
the checks mapped to it: it fails if one fails, passes if one passes, else is not applicable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = ["CHECKS", "STANDARDS", "Check", "CheckResult", "Evidence", "FleetFacts", "Requirement", "Status",
           "evaluate"]


class Status(StrEnum):
    """A check's or a requirement's verdict."""

    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    FAIL = "fail"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class Evidence:
    """What a check's verdict rests on: an audit-log entry (with its inclusion proof) or a setting.

    Attributes:
        kind: ``audit`` or ``config`` or ``state``.
        ref: The audit entry index, the setting's name, or the table queried.
        summary: One line a reader understands.
        proof: For an audit entry: the inclusion bundle (checkpoint, leaf, proof hashes) that
            ``iotguard audit`` verifies offline.
    """

    kind: str
    ref: str
    summary: str
    proof: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FleetFacts:
    """The live state a report judges (gathered by :mod:`iotguard.hub.compliance`)."""

    generated_at: datetime
    devices_by_status: Mapping[str, int]
    shared_identity_keys: int
    active_without_certificate: int
    active_trust_tiers: Mapping[str, int]
    security_contact: str
    unsafe_plain_http: bool
    unsafe_plaintext_broker: bool
    api_docs: bool
    keystore_backend: str
    allowed_suites: tuple[str, ...]
    cert_validity_days: int
    enrollment_token_ttl_s: int
    models: tuple[str, ...]
    models_without_contract: tuple[str, ...]
    models_without_support_date: tuple[str, ...]
    firmware_repository: bool
    policy_active: bool
    outbox_pending: int
    audit_size: int
    checkpoint_verified: bool
    rejected_total: Mapping[str, int]
    evidence: Mapping[str, tuple[Evidence, ...]] = field(default_factory=dict)
    #: Every ``hub.unsafe_*`` setting that is on (development and fault-injection switches).
    unsafe_options: tuple[str, ...] = ()

    @property
    def active(self) -> int:
        return int(self.devices_by_status.get("active", 0))


Verdict = tuple[Status, str]


@dataclass(frozen=True)
class Check:
    """One check against the fleet.

    Attributes:
        id: Stable identifier (``C-...``).
        title: What is checked.
        judge: Facts to verdict and reason.
        remediation: What to do when it fails.
        audit_events: Audit event types cited as evidence.
        settings: Configuration names cited as evidence.
    """

    id: str
    title: str
    judge: Callable[[FleetFacts], Verdict]
    remediation: str
    audit_events: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    check: Check
    status: Status
    reason: str
    evidence: tuple[Evidence, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.check.id, "title": self.check.title, "status": self.status.value, "reason": self.reason,
                "remediation": self.check.remediation if self.status is Status.FAIL else "",
                "evidence": [{"kind": e.kind, "ref": e.ref, "summary": e.summary,
                              **({"proof": dict(e.proof)} if e.proof else {})} for e in self.evidence]}


def _ok(cond: bool, good: str, bad: str) -> Verdict:
    return (Status.PASS, good) if cond else (Status.FAIL, bad)


def _credentials(f: FleetFacts) -> Verdict:
    return _ok(f.shared_identity_keys == 0 and f.enrollment_token_ttl_s <= 7 * 86400,
               "every device enrolled with its own key born in its key store and a one-time enrollment code; "
               "no identity key is shared",
               f"{f.shared_identity_keys} identity keys are shared by several devices, or enrollment codes "
               f"live {f.enrollment_token_ttl_s} s")


def _contact(f: FleetFacts) -> Verdict:
    return _ok(bool(f.security_contact.strip()), f"vulnerability reports go to {f.security_contact}",
               "no vulnerability-disclosure contact is published (hub.security_contact is empty)")


def _update(f: FleetFacts) -> Verdict:
    return _ok(f.firmware_repository, "signed TUF firmware repository initialised (offline root, threshold "
               "signing, anti-rollback)", "the firmware update repository is not initialised")


def _support(f: FleetFacts) -> Verdict:
    if not f.models:
        return Status.NOT_APPLICABLE, "no devices"
    return _ok(not f.models_without_support_date, f"every model ({', '.join(f.models)}) has a published "
               "end-of-support date", "no end-of-support date for " + ", ".join(f.models_without_support_date))


def _keys(f: FleetFacts) -> Verdict:
    return _ok(f.keystore_backend in ("pkcs11", "tpm"), f"hub keys live in a {f.keystore_backend} key store; "
               "the CA signs inside it", f"hub keys live in the '{f.keystore_backend}' key store (file-based)")


def _transport(f: FleetFacts) -> Verdict:
    return _ok(not f.unsafe_plain_http and not f.unsafe_plaintext_broker,
               f"mutual TLS 1.3 on every hop; telemetry sealed with {', '.join(f.allowed_suites)}",
               "an unsafe_* plaintext option is on")


def _certs(f: FleetFacts) -> Verdict:
    if not f.active:
        return Status.NOT_APPLICABLE, "no active devices"
    return _ok(f.active_without_certificate == 0 and f.cert_validity_days <= 90,
               f"every active device holds a certificate valid at most {f.cert_validity_days} days",
               f"{f.active_without_certificate} active devices lack a certificate, or validity is "
               f"{f.cert_validity_days} days")


def _unsafe(f: FleetFacts) -> Verdict:
    return _ok(not f.unsafe_options, "no hub.unsafe_* option is on",
               "unsafe options are on: " + ", ".join(f.unsafe_options))


def _surface(f: FleetFacts) -> Verdict:
    return _ok(not f.api_docs, "only /health answers without authentication; every other route is a Cedar "
               "decision", "hub.api_docs is on: the API description answers anonymous callers")


def _attestation(f: FleetFacts) -> Verdict:
    if not f.active:
        return Status.NOT_APPLICABLE, "no active devices"
    failed = f.active_trust_tiers.get("failed", 0)
    verified = f.active_trust_tiers.get("verified", 0)
    return _ok(failed == 0 and verified == f.active, f"all {verified} active devices attest verified firmware",
               f"{f.active - verified} of {f.active} active devices are not verified ({failed} failed)")


def _resilience(f: FleetFacts) -> Verdict:
    return _ok(f.outbox_pending < 1000, f"side effects delivered through the transactional outbox "
               f"({f.outbox_pending} pending); devices keep readings until acknowledged",
               f"{f.outbox_pending} side effects wait in the outbox: delivery is stuck")


def _audit(f: FleetFacts) -> Verdict:
    return _ok(f.audit_size > 0 and f.checkpoint_verified, f"{f.audit_size} audit entries under a signed "
               "checkpoint that verifies", "no signed checkpoint that verifies against the stored log")


def _minimisation(f: FleetFacts) -> Verdict:
    if not f.models:
        return Status.NOT_APPLICABLE, "no devices"
    return _ok(not f.models_without_contract, "every model has a data contract: purposes, fields, retention; "
               "undeclared fields are refused at ingest",
               "no data contract for " + ", ".join(f.models_without_contract))


def _consent(f: FleetFacts) -> Verdict:
    if not f.models:
        return Status.NOT_APPLICABLE, "no devices"
    return _ok(not f.models_without_contract and f.policy_active, "consent per purpose is recorded, audited and "
               "pushed to devices, which apply it before sealing", "consent cannot be enforced: a model has no "
               "contract or no policy is active")


def _deletion(f: FleetFacts) -> Verdict:
    return Status.PASS, "subjects can erase their data (crypto-shredding their key) from the owner portal or API; " \
        "decommissioning crypto-erases a device's session keys"


def _access(f: FleetFacts) -> Verdict:
    return _ok(f.policy_active, "a validated Cedar policy decides every operator and device request",
               "no active policy: every request is denied")


def _input(f: FleetFacts) -> Verdict:
    rejected = sum(f.rejected_total.values())
    return Status.PASS, f"untrusted input is parsed strictly; {rejected} envelopes rejected with a reason code"


CHECKS: tuple[Check, ...] = (
    Check("C-NO-DEFAULT-CREDS", "No default or shared credentials", _credentials,
          "Re-provision devices sharing a key (iotguard devices reprovision); keep enrollment codes short-lived.",
          ("device.enrolled",), ("hub.enrollment_token_ttl_s",)),
    Check("C-VULN-DISCLOSURE", "Vulnerability-disclosure contact published", _contact,
          "Set hub.security_contact (e.g. a security.txt URL or mailbox).", (), ("hub.security_contact",)),
    Check("C-UPDATE-MECHANISM", "Secure software update mechanism", _update,
          "Initialise the TUF repository: iotguard firmware init.", ("firmware.released",), ()),
    Check("C-SUPPORT-PERIOD", "Support period published per model", _support,
          "Publish an end-of-support date per model: iotguard credentials support set MODEL DATE.", (), ()),
    Check("C-KEY-STORAGE", "Secure storage of keys", _keys,
          "Use a hardware key store: hub.keystore_backend = \"pkcs11\" (HSM) or \"tpm\".", (),
          ("hub.keystore_backend",)),
    Check("C-ENCRYPTED-COMMS", "Encrypted, authenticated communication", _transport,
          "Turn off hub.unsafe_plain_http and hub.unsafe_plaintext_broker.", ("cert.issued",),
          ("hub.unsafe_plain_http", "hub.unsafe_plaintext_broker", "hub.allowed_suites")),
    Check("C-CERT-LIFETIME", "Short-lived device certificates", _certs,
          "Re-enroll devices without a certificate; keep hub.cert_validity_days <= 90.", ("cert.issued",),
          ("hub.cert_validity_days",)),
    Check("C-MINIMAL-SURFACE", "Minimised exposed surfaces", _surface, "Turn off hub.api_docs.", (),
          ("hub.api_docs",)),
    Check("C-NO-UNSAFE-OPTIONS", "No unsafe setting on", _unsafe,
          "Turn off every hub.unsafe_* setting: they exist for development and fault injection only.", (), ()),
    Check("C-ATTESTATION", "Software integrity attested", _attestation,
          "Quarantine and re-image devices whose attestation fails; attest the rest.", ("attestation.result",), ()),
    Check("C-RESILIENCE", "Resilience to outages", _resilience,
          "Check the hub's broker and database connectivity; the maintenance tick delivers the outbox.", (), ()),
    Check("C-AUDIT-LOG", "Tamper-evident security log", _audit,
          "Publish a checkpoint (iotguard audit checkpoint) and investigate any verification failure.",
          ("log.checkpoint_anchored", "device.quarantined"), ()),
    Check("C-TELEMETRY-MINIMISATION", "Telemetry minimisation", _minimisation,
          "Ship a data contract for every device model.", (), ()),
    Check("C-CONSENT", "Consent per purpose", _consent, "Ship a data contract per model and activate a policy.",
          ("consent.changed",), ()),
    Check("C-DELETION", "Deletion possible", _deletion, "", ("data.erased",), ()),
    Check("C-ACCESS-CONTROL", "Least-privilege access control", _access,
          "Activate a policy (iotguard policy activate).", ("policy.changed", "auth.failed"), ()),
    Check("C-INPUT-VALIDATION", "Input validation", _input, "", ("envelopes.rejected",), ()),
)


@dataclass(frozen=True)
class Requirement:
    standard: str
    id: str
    title: str
    checks: tuple[str, ...]


def _req(standard: str, rows: list[tuple[str, str, tuple[str, ...]]]) -> tuple[Requirement, ...]:
    return tuple(Requirement(standard, i, t, c) for i, t, c in rows)


#: Each standard's requirements and the checks that answer them.
STANDARDS: Mapping[str, tuple[Requirement, ...]] = {
    "ETSI EN 303 645 V2.1.1": _req("ETSI EN 303 645", [
        ("5.1", "No universal default passwords", ("C-NO-DEFAULT-CREDS",)),
        ("5.2", "Implement a means to manage reports of vulnerabilities", ("C-VULN-DISCLOSURE",)),
        ("5.3", "Keep software updated", ("C-UPDATE-MECHANISM", "C-SUPPORT-PERIOD")),
        ("5.4", "Securely store sensitive security parameters", ("C-KEY-STORAGE",)),
        ("5.5", "Communicate securely", ("C-ENCRYPTED-COMMS", "C-CERT-LIFETIME")),
        ("5.6", "Minimize exposed attack surfaces", ("C-MINIMAL-SURFACE", "C-NO-UNSAFE-OPTIONS")),
        ("5.7", "Ensure software integrity", ("C-ATTESTATION",)),
        ("5.8", "Ensure that personal data is secure", ("C-ENCRYPTED-COMMS", "C-TELEMETRY-MINIMISATION")),
        ("5.9", "Make systems resilient to outages", ("C-RESILIENCE",)),
        ("5.10", "Examine system telemetry data", ("C-AUDIT-LOG",)),
        ("5.11", "Make it easy for users to delete user data", ("C-DELETION",)),
        ("5.12", "Make installation and maintenance of devices easy", ("C-NO-DEFAULT-CREDS", "C-UPDATE-MECHANISM")),
        ("5.13", "Validate input data", ("C-INPUT-VALIDATION",)),
        ("6", "Data protection provisions for consumer IoT", ("C-CONSENT", "C-TELEMETRY-MINIMISATION",
                                                              "C-DELETION")),
    ]),
    "NIST IR 8259A": _req("NIST IR 8259A", [
        ("DI", "Device identification", ("C-NO-DEFAULT-CREDS", "C-CERT-LIFETIME")),
        ("DC", "Device configuration", ("C-ACCESS-CONTROL", "C-NO-UNSAFE-OPTIONS")),
        ("DP", "Data protection", ("C-KEY-STORAGE", "C-ENCRYPTED-COMMS")),
        ("LA", "Logical access to interfaces", ("C-MINIMAL-SURFACE", "C-ACCESS-CONTROL")),
        ("SU", "Software update", ("C-UPDATE-MECHANISM",)),
        ("CSA", "Cybersecurity state awareness", ("C-AUDIT-LOG", "C-ATTESTATION")),
    ]),
    "OWASP IoT Top 10 (2018)": _req("OWASP IoT Top 10", [
        ("I1", "Weak, guessable, or hardcoded passwords", ("C-NO-DEFAULT-CREDS",)),
        ("I2", "Insecure network services", ("C-MINIMAL-SURFACE", "C-ENCRYPTED-COMMS")),
        ("I3", "Insecure ecosystem interfaces", ("C-ACCESS-CONTROL", "C-MINIMAL-SURFACE")),
        ("I4", "Lack of secure update mechanism", ("C-UPDATE-MECHANISM",)),
        ("I5", "Use of insecure or outdated components", ("C-SUPPORT-PERIOD", "C-ATTESTATION")),
        ("I6", "Insufficient privacy protection", ("C-CONSENT", "C-TELEMETRY-MINIMISATION", "C-DELETION")),
        ("I7", "Insecure data transfer and storage", ("C-ENCRYPTED-COMMS", "C-KEY-STORAGE")),
        ("I8", "Lack of device management", ("C-ATTESTATION", "C-CERT-LIFETIME")),
        ("I9", "Insecure default settings", ("C-MINIMAL-SURFACE", "C-NO-DEFAULT-CREDS", "C-NO-UNSAFE-OPTIONS")),
        ("I10", "Lack of physical hardening", ("C-KEY-STORAGE",)),
    ]),
}


def _rollup(statuses: list[Status]) -> Status:
    if Status.FAIL in statuses:
        return Status.FAIL
    return Status.PASS if Status.PASS in statuses else Status.NOT_APPLICABLE


def evaluate(facts: FleetFacts) -> dict[str, Any]:
    """Judge every check and every standard's requirement; a JSON-ready report.

    Raises:
        KeyError: a requirement names an unknown check (a bug in the catalogue; tested).
    """
    results: dict[str, CheckResult] = {}
    for check in CHECKS:
        status, reason = check.judge(facts)
        results[check.id] = CheckResult(check, status, reason, tuple(facts.evidence.get(check.id, ())))
    standards = {}
    for name, requirements in STANDARDS.items():
        standards[name] = [{"id": r.id, "title": r.title, "checks": list(r.checks),
                            "status": _rollup([results[c].status for c in r.checks]).value} for r in requirements]
    summary = {s.value: sum(r.status is s for r in results.values()) for s in Status}
    return {"format": "iotguard-compliance-report/v1", "generated_at": facts.generated_at.isoformat(),
            "fleet": {"devices": dict(facts.devices_by_status), "models": list(facts.models),
                      "audit_entries": facts.audit_size},
            "summary": summary, "checks": [r.to_dict() for r in results.values()], "standards": standards}
