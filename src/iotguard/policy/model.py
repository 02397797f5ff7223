"""Requests, decisions and the names of the iotguard authorization model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

__all__ = [
    "DEVICE_ACTIONS",
    "DEVICE_SELF_ACTIONS",
    "OPERATOR_ACTIONS",
    "QUARANTINE_SEGMENT",
    "TRUST_TIERS",
    "AccessRequest",
    "Decision",
    "DecisionCode",
    "Explanation",
    "PurposeFacts",
]

#: Actions a device performs on MQTT topics.
DEVICE_ACTIONS: Final = frozenset({"publish", "subscribe"})

#: Actions a device asks for in signed REST requests; the resource is a
#: ``Device`` (itself, under the default policies).
DEVICE_SELF_ACTIONS: Final = frozenset({
    "complete_enrollment", "rekey", "renew", "tamper_report", "upload_receipt", "consent_ack", "attest",
    "update_check",
    "aggregate",
    "learn_task", "learn_update", "learn_model",
    "update_fetch",
    "report_flows", "report_health",
    "certify_ak",
})

#: Actions an operator performs through the REST API or the CLI, with the
#: resource entity types each accepts (mirrors ``iotguard.cedarschema``).
OPERATOR_ACTIONS: Final[dict[str, frozenset[str]]] = {
    "read_telemetry": frozenset({"Device", "Segment", "Hub"}),
    "view_devices": frozenset({"Device", "Segment", "Hub"}),
    "view_alerts": frozenset({"Segment", "Hub"}),
    "ack_alerts": frozenset({"Segment", "Hub"}),
    "enroll": frozenset({"Device"}),
    "manage_devices": frozenset({"Device"}),
    "quarantine": frozenset({"Device"}),
    "release": frozenset({"Device"}),
    "revoke": frozenset({"Device"}),
    "update": frozenset({"Device", "Segment"}),
    "publish_firmware": frozenset({"Firmware"}),
    "query": frozenset({"Dataset"}),
    "export": frozenset({"Dataset"}),
    "manage_consent": frozenset({"Hub"}),
    "view_audit": frozenset({"Hub"}),
    "manage_policy": frozenset({"Hub"}),
    "bootstrap": frozenset({"Hub"}),
    "own_data": frozenset({"Hub"}),
}

#: Attestation trust tiers, best first. ``failed`` blocks all but
#: attestation and enrollment traffic in the default policies.
TRUST_TIERS: Final = ("verified", "unverified", "degraded", "failed")

#: The segment a quarantined device is moved to.
QUARANTINE_SEGMENT: Final = "quarantine"


class PurposeFacts(NamedTuple):
    """Why an operator reads personal data, and what the hub knows about it (ADR 0405).

    The caller states ``purpose``; the hub, never the caller, fills in
    whether the data contract of the device read declares it and whether its
    data subject consented to it (``None``: not about one device).
    """

    purpose: str
    declared: bool | None = None
    consented: bool | None = None

    def context(self) -> dict[str, Any]:
        """The Cedar context attributes (``purpose``, ``purpose_declared``, ``purpose_consented``)."""
        out: dict[str, Any] = {"purpose": self.purpose}
        if self.declared is not None:
            out["purpose_declared"] = self.declared
        if self.consented is not None:
            out["purpose_consented"] = self.consented
        return out


class AccessRequest(NamedTuple):
    """Who asks to do what on which resource.

    A plain tuple so that it hashes in C: it is the decision-cache key. The
    context is never part of a request; the engine builds it from posture,
    except the hub-established :class:`PurposeFacts` of a data access.

    Attributes:
        principal_type: ``"Device"`` or ``"Operator"``.
        principal_id: Device id or operator name.
        action: Action name (``publish``, ``read_telemetry``...).
        resource_type: ``Topic``, ``Device``, ``Segment``, ``Dataset``,
            ``Firmware`` or ``Hub``.
        resource_id: Topic string, device id, segment name...
        role: The operator's role (empty for devices).
        purpose: Why an operator reads personal data (``None`` otherwise).
    """

    principal_type: str
    principal_id: str
    action: str
    resource_type: str
    resource_id: str
    role: str = ""
    purpose: PurposeFacts | None = None

    @classmethod
    def device(cls, device_id: str, action: str, topic: str) -> AccessRequest:
        """A device's MQTT ``publish`` or ``subscribe`` on ``topic``."""
        return cls("Device", device_id, action, "Topic", topic)

    @classmethod
    def device_request(cls, device_id: str, action: str, target: str | None = None) -> AccessRequest:
        """A device's signed REST request (``rekey``, ``renew``...) about ``target`` (itself by default)."""
        return cls("Device", device_id, action, "Device", device_id if target is None else target)

    @classmethod
    def operator(
        cls, operator_id: str, role: str, action: str, resource_type: str = "Hub", resource_id: str = "hub",
        purpose: PurposeFacts | None = None,
    ) -> AccessRequest:
        """An operator (holding ``role``) performing ``action`` on a resource (for ``purpose``)."""
        return cls("Operator", operator_id, action, resource_type, resource_id, role, purpose)

    def describe(self) -> str:
        """Human-readable one-liner (for logs and ``explain``)."""
        who = f"{self.principal_type}::{self.principal_id!r}"
        if self.role:
            who += f" (role {self.role})"
        return f"{who} {self.action} {self.resource_type}::{self.resource_id!r}"


class DecisionCode:
    """Reason codes of a :class:`Decision` (stable, used in metrics and audit)."""

    ALLOW: Final = "allow"
    FORBIDDEN: Final = "forbidden"
    NO_PERMIT: Final = "no_permit"
    UNKNOWN_PRINCIPAL: Final = "unknown_principal"
    INVALID_REQUEST: Final = "invalid_request"
    EVALUATION_ERROR: Final = "evaluation_error"
    ENGINE_NOT_LOADED: Final = "engine_not_loaded"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one authorization request.

    Attributes:
        allowed: True only when a permit matched and no forbid did.
        code: A :class:`DecisionCode` value.
        reasons: ``@id`` of the determining policies: the permits that
            allowed, or the forbids that denied (empty for ``no_permit``).
        errors: Evaluation errors reported by Cedar (any error denies).
        policy_version: Version of the policy set that decided.
    """

    allowed: bool
    code: str
    reasons: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    policy_version: int = 0

    def summary(self) -> str:
        """``allow``/``deny`` with code and reasons, for logs."""
        verdict = "allow" if self.allowed else "deny"
        why = ", ".join(self.reasons) if self.reasons else "-"
        return f"{verdict} ({self.code}; policies: {why})"


@dataclass(frozen=True)
class Explanation:
    """Why a request was allowed or denied.

    Attributes:
        request: The request explained.
        decision: The decision of the active policy set.
        matched_permits: Every permit whose scope and conditions hold.
        matched_forbids: Every forbid whose scope and conditions hold.
        context: The context record the engine built for the request.
        entities: The Cedar entities the request was evaluated with.
        note: Extra information (why the engine is not loaded, why the
            request is invalid...).
    """

    request: AccessRequest
    decision: Decision
    matched_permits: tuple[str, ...] = ()
    matched_forbids: tuple[str, ...] = ()
    context: dict[str, Any] = field(default_factory=dict)
    entities: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def render(self) -> str:
        """Multi-line text for the CLI."""
        d = self.decision
        lines = [
            f"request:  {self.request.describe()}",
            f"decision: {'ALLOW' if d.allowed else 'DENY'} ({d.code}), policy version {d.policy_version}",
        ]
        if d.allowed:
            lines.append(f"allowed by: {', '.join(d.reasons)}")
        elif d.code == DecisionCode.FORBIDDEN:
            lines.append(f"denied by forbid: {', '.join(d.reasons)}")
        elif d.code == DecisionCode.NO_PERMIT:
            lines.append("denied by default: no permit policy matched")
        if self.matched_permits and not d.allowed:
            lines.append(f"permits that matched but were overridden: {', '.join(self.matched_permits)}")
        for err in d.errors:
            lines.append(f"error: {err}")
        if self.note:
            lines.append(f"note: {self.note}")
        if self.context:
            ctx = ", ".join(f"{k}={v!r}" for k, v in sorted(self.context.items()))
            lines.append(f"context: {ctx}")
        return "\n".join(lines)
