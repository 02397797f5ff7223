"""Enforcement-facing helpers: ingest batches and operator API requests.

The hub wires these at its enforcement points; they translate what each
point knows (a device id and a topic; an API token's role, a route's action
and a resource) into :class:`~iotguard.policy.model.AccessRequest` and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from iotguard.errors import PolicyDenied
from iotguard.policy.engine import PolicyEngine
from iotguard.policy.model import OPERATOR_ACTIONS, AccessRequest, Decision, PurposeFacts

__all__ = ["IngestVerdict", "authorize_ingest", "authorize_operator", "operator_request"]


@dataclass(frozen=True, slots=True)
class IngestVerdict:
    """Decision for one envelope of an ingest batch.

    Attributes:
        device_id: Device the envelope was opened for.
        topic: Topic it arrived on.
        allowed: Whether it may be stored.
        reason: ``allow`` or the denying decision code
            (``forbidden``, ``no_permit``, ``unknown_principal``...).
        policies: Determining policy ids (for the rejection log / audit).
    """

    device_id: str
    topic: str
    allowed: bool
    reason: str
    policies: tuple[str, ...]


def authorize_ingest(
    engine: PolicyEngine, items: Sequence[tuple[str, str]], *, now: datetime | None = None
) -> list[IngestVerdict]:
    """Decide an ingest batch of ``(device_id, topic)`` publishes, in order.

    The device's segment is taken from the posture store (the registry),
    never from the message: a device cannot claim another segment.

    Raises:
        ValueError: The batch exceeds ``engine.limits.max_batch``.
    """
    decisions = engine.decide_batch((AccessRequest.device(d, "publish", t) for d, t in items), now=now)
    return [
        IngestVerdict(d, t, dec.allowed, dec.code, dec.reasons)
        for (d, t), dec in zip(items, decisions, strict=True)
    ]


def operator_request(
    operator_id: str, role: str, action: str, resource_type: str = "Hub", resource_id: str = "hub",
    purpose: PurposeFacts | None = None,
) -> AccessRequest:
    """Map an operator API call to a request.

    Raises:
        PolicyDenied: ``action`` is not an operator action or does not apply
            to ``resource_type`` (an unmapped route is denied, never allowed).
    """
    accepted = OPERATOR_ACTIONS.get(action)
    if accepted is None or resource_type not in accepted:
        raise PolicyDenied(f"no operator action {action!r} on {resource_type}")
    return AccessRequest.operator(operator_id, role, action, resource_type, resource_id, purpose)


def authorize_operator(
    engine: PolicyEngine,
    operator_id: str,
    role: str,
    action: str,
    resource_type: str = "Hub",
    resource_id: str = "hub",
    *,
    now: datetime | None = None,
    purpose: PurposeFacts | None = None,
) -> Decision:
    """The REST API's check: raises unless the operator may do ``action`` (for ``purpose``).

    A FastAPI dependency calls this with the token's name and role and the
    route's action, and maps :class:`~iotguard.errors.PolicyDenied` to 403.

    Raises:
        PolicyDenied: The request is unmapped or denied.
    """
    return engine.authorize(operator_request(operator_id, role, action, resource_type, resource_id, purpose),
                            now=now)
