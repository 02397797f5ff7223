"""What each console page shows, read from the hub's services (the routers only render it).

Every method here reads or acts through an existing service: the registry
(:class:`DeviceLifecycle`), posture, attestation, detection, consent and the
audit log. Nothing here writes a table of its own except through those
services, so a change made from the console is the same change, with the
same audit entries and outbox effects, as one made through the API or CLI.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from iotguard.audit import AuditEvent
from iotguard.audit.verify import export_segment, inclusion_bundle, verify_export, verify_inclusion_bundle
from iotguard.errors import ConfigError, IotGuardError, MalformedError, ProofError
from iotguard.hub.compose import HubServices
from iotguard.hub.console.fleet_view import FleetFilter, FleetPage, SqlFleetView
from iotguard.policy import AccessRequest
from iotguard.policy.model import Explanation
from iotguard.privacy import LegalBasis, load_contract
from iotguard.privacy.ledger import EPSILON_RESOLUTION

__all__ = ["AuditVerification", "ConsoleViews", "TrailEntry"]

#: Audit entries listed on the audit page and a device's trail.
TRAIL_LENGTH = 25


@dataclass(frozen=True)
class TrailEntry:
    """An audit entry with the outcome of checking its inclusion proof against the latest checkpoint."""

    index: int
    event: AuditEvent | None
    leaf_hash: str
    proof_length: int
    proven: bool


@dataclass(frozen=True)
class AuditVerification:
    """The outcome of the audit page's verify button."""

    ok: bool
    checkpoint_size: int
    root: str
    entries_checked: int
    message: str
    origin: str = ""
    problems: tuple[str, ...] = field(default_factory=tuple)


def _event(entry: bytes) -> AuditEvent | None:
    """An entry's event, or None when the stored bytes do not parse (the verify button says why)."""
    try:
        return AuditEvent.from_cbor(entry)
    except IotGuardError:
        return None


def _certificate(pem: str | None) -> dict[str, Any] | None:
    if not pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return {"error": "unreadable certificate"}
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial": format(cert.serial_number, "x"), "not_before": cert.not_valid_before_utc,
            "not_after": cert.not_valid_after_utc,
            "sha256": cert.fingerprint(hashes.SHA256()).hex(":")}


class ConsoleViews:
    """The console's pages over the hub's services.

    Args:
        services: The hub's services.
        fleet: The fleet overview's read model (default: on the hub's database).
    """

    def __init__(self, services: HubServices, fleet: SqlFleetView | None = None) -> None:
        self.s = services
        self.fleet_view = fleet or SqlFleetView(services.store.engine)

    # -- fleet and devices ---------------------------------------------------------

    def fleet(self, f: FleetFilter) -> tuple[FleetPage, dict[str, int]]:
        """A page of the filtered fleet and the fleet's counts."""
        return self.fleet_view.overview(f)

    def device(self, device_id: str, *, may_read_telemetry: bool = False) -> dict[str, Any]:
        """Everything the device page shows; its newest readings only when ``may_read_telemetry``
        (the viewer's Cedar ``read_telemetry`` decision on the device).

        Raises:
            UnknownDeviceError: no such device.
        """
        record = self.s.lifecycle.device(device_id)
        posture = self.s.posture.posture.get(device_id)
        return {
            "record": record,
            "certificate": _certificate(record.cert_pem),
            "posture": posture,
            "appraisals": self.s.attestation.history(device_id, limit=10),
            "alerts": self.s.detection.alerts(device_id=device_id, limit=20),
            "readings": self.s.telemetry.reading_count(device_id),
            "latest": self.fleet_view.latest_readings(device_id) if may_read_telemetry else None,
            "subject": self.s.consent.privacy.subject_of(device_id),
            "trail": self.trail(device_id),
        }

    def trail(self, subject: str) -> list[TrailEntry]:
        """The newest audit entries about ``subject``, each with its inclusion proof checked
        against the latest signed checkpoint (entries newer than it show as not yet proven)."""
        log = self.s.audit.log
        indexes = sorted(log.find_subject(subject, 1000))[-TRAIL_LENGTH:]
        checkpoint = log.latest_checkpoint()
        out = []
        for index in reversed(indexes):
            entry = log.entries(index, index + 1)[0]
            event = _event(entry)
            proof_length, proven = 0, False
            if checkpoint is not None:
                try:
                    bundle = inclusion_bundle(log, index, checkpoint)
                    verify_inclusion_bundle(bundle, log.verifier)
                    proof_length, proven = len(bundle.proof), True
                except ProofError:
                    proven = False
            out.append(TrailEntry(index, event, base64.b64encode(log.leaf_hash(index)).decode(), proof_length,
                                  proven))
        return out

    def quarantine(self, device_id: str, *, actor: str, reason: str) -> None:
        """Quarantine through the posture service (audited, broker access rewritten)."""
        self.s.posture.quarantine(device_id, actor=actor, reason=reason)

    def release(self, device_id: str, *, actor: str, reason: str) -> None:
        """Release through the posture service (the policy requires a fresh verified attestation)."""
        self.s.posture.release(device_id, actor=actor, reason=reason)

    # -- alerts ------------------------------------------------------------------------

    def alerts(self) -> dict[str, Any]:
        """Recent alerts and the response actions waiting for approval."""
        return {"alerts": self.s.detection.alerts(limit=100), "waiting": self.s.detection.awaiting_approval()}

    # -- audit -------------------------------------------------------------------------

    def audit(self) -> dict[str, Any]:
        """The log's size, latest checkpoint and newest entries."""
        log = self.s.audit.log
        size = log.size()
        start = max(0, size - TRAIL_LENGTH)
        entries = [(start + i, _event(e)) for i, e in enumerate(log.entries(start, size))]
        checkpoint = log.latest_checkpoint()
        return {"size": size, "checkpoint": checkpoint, "entries": list(reversed(entries)),
                "origin": log.origin}

    def verify_audit(self) -> AuditVerification:
        """Sign a checkpoint of the current tree, then verify the whole log against it the way an
        offline auditor does: every entry re-hashed, the root recomputed, the signature checked."""
        log = self.s.audit.log
        try:
            note = log.publish_checkpoint(self.s.clock.now())
            bundle = export_segment(log, 0, log.verify_checkpoint(note).size, note)
            verified = verify_export(bundle, log.verifier)
        except IotGuardError as exc:
            return AuditVerification(False, 0, "", 0, f"verification failed: {exc.code}", log.origin,
                                     (str(exc.code),))
        cp = verified.checkpoint
        return AuditVerification(True, cp.size, base64.b64encode(cp.root).decode(), len(verified.events),
                                 f"all {len(verified.events)} entries verify against the signed checkpoint",
                                 cp.origin)

    # -- policy ----------------------------------------------------------------------------

    def policy(self, old: int | None = None, new: int | None = None) -> dict[str, Any]:
        """The active policy, its versions and activations, and (when asked) a diff of two versions.

        Raises:
            MalformedError: an unknown version.
        """
        admin = self.s.posture.admin
        versions = admin.repository.versions()
        active = admin.repository.active_version()
        try:
            diff = admin.diff(old, new) if old is not None and new is not None else None
        except ConfigError:
            raise MalformedError("unknown policy version") from None
        return {"active": active, "versions": list(reversed(versions)),
                "activations": list(reversed(admin.repository.activations()))[:20], "diff": diff,
                "old": old, "new": new}

    def explain(self, principal_type: str, principal_id: str, role: str, action: str, resource_type: str,
                resource_id: str) -> Explanation:
        """Why the active policy allows or denies a request (what ``iotguard policy explain`` prints).

        Raises:
            MalformedError: a field outside its allowed set or length.
        """
        fields = (principal_id, role, action, resource_type, resource_id)
        if principal_type not in ("Operator", "Device") or any(len(f) > 256 for f in fields) or not all(
                (principal_id, action, resource_type, resource_id)):
            raise MalformedError("explain needs a principal, an action and a resource")
        request = AccessRequest(principal_type, principal_id, action, resource_type, resource_id,
                                role if principal_type == "Operator" else "")
        return self.s.posture.engine.explain(request)

    # -- privacy and live rates ----------------------------------------------------------

    def subject(self, subject_id: str) -> dict[str, Any]:
        """A data subject's devices, consent state, privacy receipts, privacy loss per budget period and
        erasure records (the privacy page)."""
        privacy = self.s.consent.privacy
        devices = privacy.devices_of(subject_id)
        receipts, ledger = privacy.receipts_for_export(devices)
        models = set()
        for device_id in devices:
            try:
                models.add(self.s.lifecycle.device(device_id).model)
            except IotGuardError:
                continue
        contracts = []
        for model in sorted(models):
            try:
                contracts.append(load_contract(model))
            except ConfigError:
                continue
        return {"subject_id": subject_id, "devices": devices, "contracts": contracts,
                "consent": privacy.consent_state(subject_id),
                "erasures": privacy.erasures_of(subject_id),
                "receipts": [{"device_id": device_id, "received_at": received_at}
                             for device_id, received_at, _body in receipts[-20:]],
                "receipt_count": len(receipts),
                "privacy_loss": [{"device_id": r["device_id"], "period": r["period"],
                                  "epsilon": r["spent_units"] * EPSILON_RESOLUTION} for r in ledger]}

    def rates(self) -> dict[str, Any]:
        """Ingest counters of this hub process and rejections per reason."""
        summary = self.s.telemetry.summary()
        rejected = summary.get("rejected") or {}
        return {"at": datetime.now(tz=UTC).isoformat(), **summary,
                "rejected_count": sum(int(n) for n in rejected.values())}

    # -- the device owner's portal -------------------------------------------------------

    def owner(self, subject_id: str) -> dict[str, Any]:
        """What the owner's devices collect, why and for how long, and their consent per purpose."""
        privacy = self.s.consent.privacy
        consent = privacy.consent_state(subject_id)
        devices = []
        for device_id in privacy.devices_of(subject_id):
            try:
                record = self.s.lifecycle.device(device_id)
                contract = load_contract(record.model)
            except (IotGuardError, ConfigError):
                continue
            purposes = []
            for name, p in contract.purposes.items():
                decision = consent.decisions.get(name)
                purposes.append({
                    "name": name, "description": p.description, "legal_basis": p.legal_basis.value,
                    "consent_based": p.legal_basis is LegalBasis.CONSENT,
                    "retention_days": round(p.retention.total_seconds() / 86400, 1),
                    "fields": [{"name": f, "description": contract.fields[f].description,
                                "unit": contract.fields[f].unit} for f in p.fields if f in contract.fields],
                    "granted": decision.granted if decision else None,
                    "decided_at": decision.at if decision else None,
                })
            devices.append({"device_id": device_id, "model": record.model, "title": contract.title,
                            "controller": contract.controller, "contact": contract.contact,
                            "purposes": purposes})
        return {"subject_id": subject_id, "devices": devices, "consent_version": consent.version}

    def owner_purposes(self, subject_id: str) -> set[str]:
        """Consent-based purposes declared by the contracts of the owner's devices (the only ones the portal
        changes: processing on another legal basis does not start or stop with consent)."""
        return {p["name"] for d in self.owner(subject_id)["devices"] for p in d["purposes"] if p["consent_based"]}
