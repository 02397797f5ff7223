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

from iotguard.audit import AuditEvent, NoteVerifier, verify_cosigned
from iotguard.audit.merkle import verify_consistency
from iotguard.audit.note import open_checkpoint
from iotguard.audit.verify import export_segment, inclusion_bundle, verify_export, verify_inclusion_bundle
from iotguard.errors import ConfigError, IotGuardError, MalformedError, PolicyDenied, ProofError
from iotguard.hub.compose import HubServices
from iotguard.hub.console.fleet_view import FleetFilter, FleetPage, SqlFleetView
from iotguard.hub.services.data_access import Reader
from iotguard.hub.witnessing import load_witnesses
from iotguard.policy import AccessRequest, authorize_operator
from iotguard.policy.model import Explanation
from iotguard.privacy import LegalBasis, load_contract
from iotguard.privacy.ledger import EPSILON_RESOLUTION

__all__ = ["AuditVerification", "ConsoleViews", "Cosignature", "FinalCheckpoint", "TrailEntry"]

#: Audit entries listed on the audit page and a device's trail.
TRAIL_LENGTH = 25
#: Audit event types that change (or record) a device's posture: its posture history on the device page.
POSTURE_EVENTS = frozenset({"device.registered", "device.quarantined", "device.released", "device.tampered",
                            "device.reprovisioned", "device.decommissioned", "attestation.result"})
#: Posture changes listed on the device page (newest first).
POSTURE_HISTORY_LENGTH = 20
#: Readings the device page reads (its newest stored ones) for a chosen purpose.
READINGS_SHOWN = 20


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


@dataclass(frozen=True)
class Cosignature:
    """A witness's cosignature line on a final checkpoint, as checked against the configured witnesses."""

    witness: str
    key_id: str
    cosigned_at: datetime | None
    state: str


@dataclass(frozen=True)
class FinalCheckpoint:
    """The newest checkpoint that witness cosignatures made final."""

    note: str
    size: int
    root: str
    cosignatures: tuple[Cosignature, ...]
    quorum: int


def _gate(name: str, bad: int, of: int, limit: float, action: str) -> dict[str, Any]:
    """One health gate: the share measured (None before anything was measured) against its limit."""
    share = bad / of if of else None
    return {"name": name, "bad": bad, "of": of, "share": share, "limit": limit, "action": action,
            "ok": share is None or share <= limit}


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

    def device(self, device_id: str) -> dict[str, Any]:
        """Everything the device page shows except readings: those need a stated purpose
        (:meth:`readable_purposes`, :meth:`readings`).

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
            "subject": self.s.consent.privacy.subject_of(device_id),
            "trail": self.trail(device_id),
            "posture_history": self.posture_history(device_id),
        }

    def posture_history(self, device_id: str) -> list[TrailEntry]:
        """The device's newest posture events (registration, quarantine, release, tamper, appraisals), read
        newest first from its audit entries; only their index and event (no proof: the trail proves entries)."""
        log = self.s.audit.log
        out: list[TrailEntry] = []
        for index in sorted(log.find_subject(device_id, 1000), reverse=True):
            event = _event(log.entries(index, index + 1)[0])
            if event is not None and event.type in POSTURE_EVENTS:
                out.append(TrailEntry(index, event, "", 0, False))
                if len(out) == POSTURE_HISTORY_LENGTH:
                    break
        return out

    def readable_purposes(self, principal: str, role: str, device_id: str) -> list[str]:
        """The purposes the viewer may choose to read ``device_id``'s readings for: declared by its model's
        data contract, consented to by its data subject, and allowed by Cedar for this viewer with those
        facts (the same decision :meth:`readings` makes, which also audits it)."""
        access = self.s.data_access
        now = self.s.clock.now()
        try:
            declared = sorted(load_contract(self.s.lifecycle.device(device_id).model).purposes)
        except (ConfigError, IotGuardError):
            return []
        out = []
        for purpose in declared:
            facts = access.purpose_facts(device_id, purpose, now)
            if not (facts.declared and facts.consented):
                continue
            try:
                authorize_operator(access.policy, principal, role, "read_telemetry", "Device", device_id, now=now,
                                   purpose=facts)
            except PolicyDenied:
                continue
            out.append(purpose)
        return out

    def readings(self, principal: str, role: str, device_id: str, purpose: str) -> dict[str, Any]:
        """The device's newest readings collected for ``purpose``, read through
        :class:`~iotguard.hub.services.data_access.DataAccessService`: a Cedar ``read_telemetry`` decision
        with the purpose facts, audited as ``data.accessed`` (or as refused).

        Raises:
            PolicyDenied: no purpose, or Cedar refuses the read.
        """
        after = self.fleet_view.reading_floor(device_id, READINGS_SHOWN)
        return self.s.data_access.read_readings(Reader(principal, role, "console"), purpose, after=after,
                                                device_id=device_id, limit=READINGS_SHOWN)

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
        """The log's size, latest checkpoint, latest final checkpoint with its witness cosignatures
        (:meth:`final_checkpoint`) and newest entries."""
        log = self.s.audit.log
        size = log.size()
        start = max(0, size - TRAIL_LENGTH)
        entries = [(start + i, _event(e)) for i, e in enumerate(log.entries(start, size))]
        checkpoint = log.latest_checkpoint()
        return {"size": size, "checkpoint": checkpoint, "entries": list(reversed(entries)),
                "origin": log.origin, "final": self.final_checkpoint()}

    def witnesses(self) -> tuple[list[NoteVerifier], int]:
        """The cosignature keys of the configured witnesses (``hub.witnesses_file``) and the quorum.

        Raises:
            ConfigError: the witnesses file does not read.
        """
        cfg = self.s.cfg
        if not cfg.witnesses_file:
            return [], 0
        keys = [key for _url, key, _ca in load_witnesses(cfg.witnesses_file)]
        return keys, cfg.witness_quorum or len(keys)

    def final_checkpoint(self) -> FinalCheckpoint | None:
        """The newest checkpoint made final by witness cosignatures, each cosignature checked against
        the configured witness keys (None when no checkpoint is final yet)."""
        log = self.s.audit.log
        note = log.latest_final_checkpoint()
        if note is None:
            return None
        try:
            keys, quorum = self.witnesses()
        except ConfigError:
            keys, quorum = [], 0
        checkpoint, parsed = open_checkpoint(note, log.verifier)
        cosignatures = []
        for sig in parsed.signatures:
            if log.verifier.matches(sig):
                continue
            key = next((k for k in keys if k.matches(sig)), None)
            at: datetime | None = None
            if key is None:
                state = "not a configured witness"
            else:
                try:
                    stamp = key.verify(parsed.text, sig)
                    at = datetime.fromtimestamp(stamp, tz=UTC) if stamp is not None else None
                    state = "verified"
                except ProofError:
                    state = "does not verify"
            cosignatures.append(Cosignature(sig.name, sig.key_id.hex(), at, state))
        return FinalCheckpoint(note, checkpoint.size, base64.b64encode(checkpoint.root).decode(),
                               tuple(cosignatures), quorum)

    def verify_audit(self) -> AuditVerification:
        """Sign a checkpoint of the current tree, then verify the whole log against it the way an
        offline auditor does: every entry re-hashed, the root recomputed, the signature checked.
        When a checkpoint is final, also check its witness cosignatures against the configured
        witness keys and quorum, and that the current tree extends it (a consistency proof)."""
        log = self.s.audit.log
        try:
            note = log.publish_checkpoint(self.s.clock.now())
            bundle = export_segment(log, 0, log.verify_checkpoint(note).size, note)
            verified = verify_export(bundle, log.verifier)
        except IotGuardError as exc:
            return AuditVerification(False, 0, "", 0, f"verification failed: {exc.code}", log.origin,
                                     (str(exc.code),))
        cp = verified.checkpoint
        message = f"all {len(verified.events)} entries verify against the signed checkpoint"
        witnessed = self._verify_final(cp.size, cp.root)
        if witnessed is not None and not witnessed[0]:
            return AuditVerification(False, cp.size, base64.b64encode(cp.root).decode(), len(verified.events),
                                     f"{message}, but the final checkpoint does not: {witnessed[1]}", cp.origin,
                                     (witnessed[1],))
        if witnessed is not None:
            message = f"{message}; {witnessed[1]}"
        return AuditVerification(True, cp.size, base64.b64encode(cp.root).decode(), len(verified.events),
                                 message, cp.origin)

    def _verify_final(self, size: int, root: bytes) -> tuple[bool, str] | None:
        """(ok, what) for the latest final checkpoint against the witness policy and the tree
        ``(size, root)`` just verified; None when no checkpoint is final."""
        log = self.s.audit.log
        note = log.latest_final_checkpoint()
        if note is None:
            return None
        try:
            keys, quorum = self.witnesses()
            if not keys:
                return False, "no witnesses are configured to check its cosignatures against"
            names = verify_cosigned(note, log.verifier, keys, quorum)
            final, _ = open_checkpoint(note, log.verifier)
            verify_consistency(final.size, size, final.root, root, log.consistency_proof(final.size, size))
        except IotGuardError as exc:
            return False, str(exc.code)
        return True, (f"final checkpoint of size {final.size} carries {len(names)} of the {quorum} required "
                      f"witness cosignatures ({', '.join(names)}) and the current tree extends it")

    # -- rollouts --------------------------------------------------------------------------

    def rollouts(self) -> list[dict[str, Any]]:
        """Every campaign, newest first, with its current cohort's progress and each health gate's
        measured value beside its limit (what :func:`iotguard.rollout.evaluate` compares)."""
        out = []
        for campaign in reversed(self.s.rollouts.campaigns()):
            status = self.s.rollouts.status(campaign.rollout_id)
            h, g = status.health, campaign.gates
            sent = h.readings + h.rejections
            gates = [
                _gate("rollbacks of the devices that reported", h.rolled_back, h.reported, g.max_rollback_rate,
                      "abort"),
                _gate("failed attestations of the updated devices", h.attestation_failed, h.attested,
                      g.max_attestation_failure_rate, "pause"),
                _gate("rejected telemetry of the updated devices", h.rejections, sent, g.max_rejection_rate,
                      "pause"),
            ]
            out.append({"c": campaign, "h": h, "verdict": status.verdict, "gates": gates,
                        "min_reported": g.min_reported, "soak_s": int(g.soak.total_seconds()),
                        "stages": [(i, p) for i, p in enumerate(campaign.stages)]})
        return out

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
