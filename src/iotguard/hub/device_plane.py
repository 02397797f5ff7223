"""One device plane: every device-originated request takes one path.

parse (size-limited, strict) -> attempt limits (per client address and per
claimed device, in the database so they hold across hub processes) ->
:func:`~iotguard.identity.verify_signed_request` (signature by the device
key, timestamp window, nonce, device status, certificate validity) -> one
Cedar decision for the device principal with its posture -> uniform audit
of every refusal (``auth.failed`` with the action and the reason code).

Enrollment is the one device request without a device key yet: it is
authenticated by the one-time token and proof of possession
(:meth:`~iotguard.hub.services.lifecycle.DeviceLifecycle.enroll`), then decided by Cedar as the device's
``complete_enrollment`` with the posture it enrolls with. Routes call
:func:`device_request` / :meth:`DevicePlane.enroll` and nothing else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from iotguard.audit import AuditEvent, AuditSink, EventType
from iotguard.clock import Clock
from iotguard.errors import (
    AuthenticationError,
    IotGuardError,
    MalformedError,
    PolicyDenied,
    UnknownDeviceError,
)
from iotguard.hub.event_counts import EventCounts
from iotguard.hub.policy_store import enrollment_posture
from iotguard.hub.ratelimit import Attempt, AttemptLimiter, AttemptLimits, AttemptStore
from iotguard.hub.ratelimit_store import SqlAttemptStore, SqlSeenNonces
from iotguard.hub.stores.devices import DeviceRecord, DeviceStore
from iotguard.identity import (
    DeviceView,
    SeenNonces,
    SignedRequestLimits,
    VerifiedRequest,
    parse_signed_request,
    verify_signed_request,
)
from iotguard.policy import AccessRequest, PolicyEngine, Posture

if TYPE_CHECKING:  # the lifecycle service is passed in; importing it here would be a cycle
    from iotguard.hub.services.lifecycle import DeviceLifecycle

__all__ = [
    "ADDRESS_LIMITS",
    "CREDENTIAL_LIMITS",
    "DEVICE_ACTION_EXTENSION",
    "DevicePlane",
    "body_openapi",
    "client_address",
    "credential_body",
    "device_request",
    "signed_request_openapi",
]

log = logging.getLogger(__name__)

#: Per client address: a gateway may enroll many devices, a guesser still locks out after 10 failures.
ADDRESS_LIMITS = AttemptLimits(rate_per_s=50.0, burst=500, max_failures=10)
#: Per credential (device id, API token id): only failures count; a valid credential always passes.
CREDENTIAL_LIMITS = AttemptLimits(rate_per_s=50.0, burst=500, max_failures=5)
#: OpenAPI extension naming a route's device action (the route-coverage test reads it).
DEVICE_ACTION_EXTENSION = "x-iotguard-device-action"
#: Largest JSON body a device or credential route reads.
MAX_BODY_BYTES = 100_000


class DevicePlane:
    """The device requests' authenticator and policy enforcement point.

    Args:
        store: The device registry.
        engine: The hub database (posture, shared attempt limits and nonces).
        policy: The Cedar decision point (reads device posture).
        audit: Where refusals are recorded.
        clock: Time source.
        nonces: Seen-nonce store; the hub database when None.
        attempts: Attempt-limit state; the hub database when None.
        limits: Signed-request bounds.
        reread_posture: Re-reads one device's posture from the database.
        on_refusal: Told of every refusal of a named device (device, action, reason, time).
        step_up: Sends a device an attestation challenge (policies asking for fresh evidence).
    """

    def __init__(self, store: DeviceStore, engine: Engine, policy: PolicyEngine, audit: AuditSink, clock: Clock, *,
                 nonces: SeenNonces | None = None, attempts: AttemptStore | None = None,
                 limits: SignedRequestLimits | None = None,
                 reread_posture: Callable[[str], bool] | None = None,
                 on_refusal: Callable[[str, str, str, datetime], None] | None = None,
                 step_up: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.engine = engine
        self.policy = policy
        self.audit = audit
        self.clock = clock
        self.nonces: SeenNonces = nonces if nonces is not None else SqlSeenNonces(engine)
        state: AttemptStore = attempts if attempts is not None else SqlAttemptStore(engine)
        self.addresses = AttemptLimiter(ADDRESS_LIMITS, state)
        self.credentials = AttemptLimiter(CREDENTIAL_LIMITS, state)
        self.limits = limits or SignedRequestLimits()
        #: Re-reads one device's posture from the database (another hub process may have changed it).
        self.reread_posture = reread_posture
        #: Told of every refusal (device, action, reason, time): the hub's signals for detection.
        self.on_refusal = on_refusal
        #: Asks a device for fresh evidence (an attestation challenge) when a policy annotated
        #: ``@step_up("attest")`` denied it.
        self.step_up = step_up
        #: Refusals by this process: (action, reason code) -> count (``/metrics``).
        self.refusals = EventCounts()

    def attempt(self, scope: str, client: str) -> Attempt:
        """Start an authentication attempt from ``client`` (an address) for ``scope``.

        Raises:
            LockedOut: the address sent too many requests.
        """
        return Attempt(self.addresses, self.credentials, (f"{scope}-addr", client), self.clock.now())

    def verify(self, action: str, wire: Mapping[str, Any], client: str) -> VerifiedRequest:
        """Authenticate and authorize one signed device request.

        Raises:
            MalformedError, UnknownDeviceError, IntegrityError, StaleError,
            ReplayError, RevokedError, ExpiredError: the verifier refused it.
            LockedOut: it failed while the address or device was locked out.
            PolicyDenied: Cedar denied the device this action.
        """
        attempt = self.attempt("device", client)
        claimed = ""
        try:
            parsed = parse_signed_request(wire.get("request"), wire.get("signature"), limits=self.limits)
            claimed = parsed.device_id
            attempt.credential(("device", claimed))
            verified = verify_signed_request(parsed, self._view(claimed), attempt.now, self.limits,
                                             nonces=self.nonces, expected_action=action)
        except IotGuardError as exc:
            self._refused(claimed, action, exc.code, attempt.now)
            attempt.failed()
            raise
        attempt.succeeded()
        self.authorize(verified.device_id, action, now=attempt.now)
        return verified

    def authorize(self, device_id: str, action: str, *, now: datetime,
                  provisional: Posture | None = None) -> None:
        """Cedar decision for ``device_id`` doing ``action`` on itself, with its posture.

        Raises:
            PolicyDenied: denied (the message names the deciding policies).
        """
        request = AccessRequest.device_request(device_id, action)
        if provisional is not None:
            decision = self.policy.decide_provisional(request, provisional, now=now)
        else:
            decision = self.policy.decide(request, now=now)
            if not decision.allowed and self.reread_posture is not None and self.reread_posture(device_id):
                decision = self.policy.decide(request, now=now)
        if not decision.allowed:
            self._refused(device_id, action, "policy_denied", now, policies=list(decision.reasons),
                          decision=decision.code)
            policy_set = self.policy.policy_set
            if (self.step_up is not None and policy_set is not None
                    and policy_set.ids_annotated("step_up", "attest").intersection(decision.reasons)):
                self.step_up(device_id)
            raise PolicyDenied(f"{request.describe()}: {decision.summary()}")

    def enroll(self, registry: DeviceLifecycle, body: Mapping[str, Any], client: str) -> dict[str, Any]:
        """Enrollment: one-time token and proof of possession, then Cedar ``complete_enrollment``.

        Raises:
            MalformedError, EnrollmentError: bad request, token or proof.
            LockedOut: failed while locked out.
            PolicyDenied: Cedar denied the enrollment.
        """
        attempt = self.attempt("enroll", client)
        attempt.credential(("enroll", str(body.get("device_id", ""))[:64]))

        def decide(record: DeviceRecord) -> None:
            posture = enrollment_posture(self.engine, record.device_id, segment=record.segment,
                                         model=record.model)
            self.authorize(record.device_id, "complete_enrollment", now=attempt.now, provisional=posture)

        try:
            response = registry.enroll(dict(body), authorize=decide)
        except PolicyDenied:
            raise
        except IotGuardError:
            attempt.failed()
            raise
        attempt.succeeded()
        return response

    def refused(self, device_id: str, action: str, reason: str, now: datetime) -> None:
        """Audit a refusal decided outside :meth:`verify` (a device read authenticated by its TLS certificate)."""
        self._refused(device_id, action, reason, now)

    def _view(self, device_id: str) -> DeviceView | None:
        try:
            d = self.store.get_device(device_id)
        except UnknownDeviceError:
            return None
        return DeviceView(d.device_id, d.status, d.identity_public_key, d.cert_not_after)

    def _refused(self, device_id: str, action: str, reason: str, now: datetime, **details: Any) -> None:
        self.refusals.add(action, reason)
        who = device_id or "unknown"
        try:
            self.audit.record(AuditEvent(EventType.AUTH_FAILED, now, who, who,
                                         {"what": action, "reason": reason, **details}))
        except IotGuardError as exc:
            log.error("could not audit a refused %s request: %s", action, exc.code)
        if self.on_refusal is not None and device_id:
            self.on_refusal(device_id, action, reason, now)


def client_address(request: Request) -> str:
    """The peer address of an HTTP request (``unknown`` when the server does not say)."""
    return request.client.host if request.client else "unknown"


async def _json_object(request: Request) -> dict[str, Any]:
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise MalformedError("request body too large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedError("request body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedError("request body must be a JSON object")
    return data


def device_request(plane: DevicePlane, action: str) -> Callable[[Request], Awaitable[VerifiedRequest]]:
    """FastAPI dependency of a device route: the verified, authorized request for ``action``."""

    async def dependency(request: Request) -> VerifiedRequest:
        wire = await _json_object(request)
        if not wire.get("request") or not wire.get("signature"):
            raise AuthenticationError("signed device request required")
        if set(wire) != {"request", "signature"}:
            raise MalformedError("a signed device request has exactly: request, signature")
        return await run_in_threadpool(plane.verify, action, wire, client_address(request))

    return dependency


def credential_body(model: type[BaseModel], credential_fields: tuple[str, ...]
                    ) -> Callable[[Request], Awaitable[dict[str, Any]]]:
    """FastAPI dependency of a route whose credential travels in the body (enrollment, bootstrap).

    No credential is ``unauthenticated`` (401), like a missing bearer token;
    a body that does not fit ``model`` is ``malformed`` (400).
    """

    async def dependency(request: Request) -> dict[str, Any]:
        data = await _json_object(request)
        if any(not data.get(name) for name in credential_fields):
            raise AuthenticationError(f"{' and '.join(credential_fields)} required")
        try:
            return model.model_validate(data).model_dump()
        except ValidationError:
            raise MalformedError(f"request body does not fit {model.__name__}") from None

    return dependency


def body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body of a :func:`credential_body` route (the dependency reads the body itself)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


def signed_request_openapi(action: str) -> dict[str, Any]:
    """OpenAPI additions of a device route: its body schema and its device action."""
    schema = {"type": "object", "required": ["request", "signature"], "additionalProperties": False,
              "properties": {"request": {"type": "string", "description": "base64url canonical CBOR request"},
                             "signature": {"type": "string", "description": "base64url Ed25519 signature"}}}
    return {DEVICE_ACTION_EXTENSION: action,
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
