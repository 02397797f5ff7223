"""Signed device requests: one format, one verifier (pure logic, no I/O).

Every request a device sends to the hub's REST API after enrollment (re-key,
certificate renewal, tamper report, privacy receipt, consent
acknowledgement, and the attestation and update checks to come) is one
*signed request*: a canonical CBOR map ::

    {"v": 1, "action": "rekey", "device_id": "dev-1",
     "ts": 1767225600, "nonce": h'16 random bytes', "body": {...}}

signed with the device's Ed25519 identity key over
``b"iotguard-device-request-v1:" + action + b"\\x00" + cbor``. The action in
the signing prefix separates the domains: a signature over a renewal can
never verify as a re-key. On the wire (HTTP JSON) a request is
``{"request": base64url(cbor), "signature": base64url(sig)}``.

:func:`verify_signed_request` applies every check in one place and raises a
typed error with a reason code for each refusal: unknown device
(``unknown_device``), bad signature (``forged``), timestamp outside the
window (``stale``), nonce already seen (``replay``), device not active
(``revoked``), operational certificate expired (``expired``). Seen nonces
live behind the small :class:`SeenNonces` protocol so that the hub can keep
them in its database (shared by every hub process).
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import cbor2

from iotguard.errors import (
    ExpiredError,
    MalformedError,
    ReplayError,
    RevokedError,
    StaleError,
    UnknownDeviceError,
)
from iotguard.identity.enrollment import b64d, b64e, verify_signature

__all__ = [
    "DEVICE_REQUEST_ACTIONS",
    "DeviceView",
    "FieldSpec",
    "InMemorySeenNonces",
    "OutgoingRequest",
    "RequestSpec",
    "SeenNonces",
    "SignedRequest",
    "SignedRequestLimits",
    "VerifiedRequest",
    "encode_signed_request",
    "new_nonce",
    "parse_signed_request",
    "sign_device_request",
    "signing_message",
    "verify_signed_request",
]

VERSION: Final = 1
NONCE_BYTES: Final = 16
_DOMAIN: Final = b"iotguard-device-request-v1:"
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENVELOPE_KEYS: Final = frozenset({"v", "action", "device_id", "ts", "nonce", "body"})


@dataclass(frozen=True)
class FieldSpec:
    """Type and bounds of one body field.

    Attributes:
        kind: ``"bytes"``, ``"text"``, ``"uint"`` or ``"text_list"``.
        max_length: Most bytes / characters / list items.
        exact_length: Required length of a ``bytes`` field (0: any up to max).
        min_value: Smallest ``uint``.
        max_value: Largest ``uint``.
    """

    kind: str
    max_length: int = 0
    exact_length: int = 0
    min_value: int = 0
    max_value: int = 2**32 - 1


@dataclass(frozen=True)
class RequestSpec:
    """What a device request of one action carries.

    Attributes:
        fields: Body fields by name; a body has exactly these, less any of ``optional``.
        requires_valid_certificate: Refuse (``expired``) unless the device's
            operational certificate is valid. Tamper reports do not: evidence
            of tampering from an authentic key matters even after expiry.
        optional: Names of ``fields`` a body may leave out (fields added to an action later, so an
            older agent's request still parses).
    """

    fields: Mapping[str, FieldSpec]
    requires_valid_certificate: bool = True
    optional: frozenset[str] = frozenset()


#: Device request actions and their bodies (also the Cedar action names).
DEVICE_REQUEST_ACTIONS: Final[Mapping[str, RequestSpec]] = {
    "rekey": RequestSpec({
        "epoch": FieldSpec("uint", min_value=2, max_value=2**32 - 1),
        "kex_public_key": FieldSpec("bytes", exact_length=32, max_length=32),
        "suites": FieldSpec("text_list", max_length=8),
    }),
    # A fresh transport key: the transport certificate is renewed with the operational one (ADR 0600).
    "renew": RequestSpec({"transport_public_key": FieldSpec("bytes", exact_length=32, max_length=32)}),
    "tamper_report": RequestSpec({"reason": FieldSpec("text", max_length=128)}, requires_valid_certificate=False),
    "upload_receipt": RequestSpec({"receipt": FieldSpec("bytes", max_length=65536)}),
    "consent_ack": RequestSpec({"ack": FieldSpec("bytes", max_length=4096)}),
    # Remote attestation (docs/attestation.md): empty evidence asks for a nonce; otherwise the
    # evidence answers ``nonce`` and names its attestation key (bound to the device on first use).
    "attest": RequestSpec({
        "nonce": FieldSpec("bytes", max_length=32),
        "evidence": FieldSpec("bytes", max_length=16 * 1024),
        "attestation_key": FieldSpec("bytes", max_length=256),
        "algorithm": FieldSpec("text", max_length=16),
    }),
    # A secure-aggregation round (docs/analytics.md): ``step`` is advertise, poll, shares, masked or
    # unmask; ``message`` the step's canonical CBOR (empty for a poll).
    "aggregate": RequestSpec({
        "round": FieldSpec("text", max_length=32),
        "step": FieldSpec("text", max_length=16),
        "message": FieldSpec("bytes", max_length=65_000),
    }),
    # Federated learning (docs/learning.md): the current task of a training run, and an encoded model update.
    # ``accepts`` (optional): the update compressions the device can send, ``max_update_bytes`` (optional,
    # 0: no limit) the most bytes it will send for one update; the hub picks the round's compression from them.
    "learn_task": RequestSpec({"run_id": FieldSpec("text", max_length=64),
                               "accepts": FieldSpec("text_list", max_length=4),
                               "max_update_bytes": FieldSpec("uint", max_value=2**31 - 1),
                               # Secure FedBuff (ADR 1307): the device holds an update on base version ready - 1.
                               "ready": FieldSpec("uint", max_value=2**31 - 1)},
                              optional=frozenset({"accepts", "max_update_bytes", "ready"})),
    "learn_model": RequestSpec({"name": FieldSpec("text", max_length=64), "version": FieldSpec("uint")}),
    "learn_update": RequestSpec({
        "run_id": FieldSpec("text", max_length=64),
        "base_version": FieldSpec("uint", max_value=2**31 - 1),
        "num_examples": FieldSpec("uint", min_value=1, max_value=10_000_000),
        "update": FieldSpec("bytes", max_length=65536),
    }),
    # Firmware updates (docs/updates.md): one TUF repository file (metadata or image) by path.
    "update_fetch": RequestSpec({"path": FieldSpec("text", max_length=256)}),
    # A device's update check-in: the version it runs, its last attempt and how it ended;
    # the answer names the release its rollout cohort should install.
    "update_check": RequestSpec({
        "version": FieldSpec("uint", max_value=2**31 - 1),
        "attempted": FieldSpec("uint", max_value=2**31 - 1),
        "outcome": FieldSpec("text", max_length=16),
    }),
    # A sensor's flows (docs/detection.md): a flow report, strictly decoded by the detection domain.
    "report_flows": RequestSpec({"flows": FieldSpec("bytes", max_length=60_000)}),
    # A device's own health metrics (docs/detection.md): CBOR, strictly decoded by the detection domain.
    "report_health": RequestSpec({"metrics": FieldSpec("bytes", max_length=8192)}),
    # Certifying a TPM attestation key against the device's endorsement key (ADR 0810): an empty
    # secret asks for a credential (TPM2_MakeCredential) for the AK; the secret the TPM recovered
    # (TPM2_ActivateCredential) answers it.
    "certify_ak": RequestSpec({
        "ak_public_area": FieldSpec("bytes", max_length=1024),
        "secret": FieldSpec("bytes", max_length=32),
        "ek_certificate": FieldSpec("bytes", max_length=4096),
    }),
}


@dataclass(frozen=True)
class SignedRequestLimits:
    """Named bounds of signed-request verification.

    Attributes:
        max_clock_skew_s: A request's timestamp may differ from the hub's
            clock by at most this much, either way.
        max_request_bytes: Largest encoded request accepted.
    """

    max_clock_skew_s: int = 300
    max_request_bytes: int = 70_000

    def __post_init__(self) -> None:
        if not 1 <= self.max_clock_skew_s <= 3600:
            raise ValueError("max_clock_skew_s must lie in [1, 3600]")
        if not 256 <= self.max_request_bytes <= 1_048_576:
            raise ValueError("max_request_bytes must lie in [256, 1048576]")


@dataclass(frozen=True)
class SignedRequest:
    """A parsed, not yet verified device request.

    Attributes:
        action: Action the device asks for.
        device_id: Device that claims to sign it.
        ts: Claimed signing time (POSIX seconds).
        nonce: Random per-request value.
        body: Action-specific fields (checked against the action's spec).
        message: The exact bytes the signature covers.
        signature: Ed25519 signature.
    """

    action: str
    device_id: str
    ts: int
    nonce: bytes
    body: Mapping[str, Any]
    message: bytes = field(repr=False)
    signature: bytes = field(repr=False)


@dataclass(frozen=True)
class DeviceView:
    """What the verifier needs to know about the claimed signer (from the registry).

    Attributes:
        device_id: Registry id.
        status: ``pending``, ``active``, ``revoked`` or ``decommissioned``.
        identity_public_key: Ed25519 key from enrollment (None before).
        cert_not_after: Expiry of the operational certificate (None: none).
    """

    device_id: str
    status: str
    identity_public_key: bytes | None
    cert_not_after: datetime | None


@dataclass(frozen=True)
class VerifiedRequest:
    """A request that passed every check of :func:`verify_signed_request`.

    Attributes:
        action: The action.
        device_id: The authenticated device.
        issued_at: Its signing time.
        nonce: Its nonce (now recorded as seen).
        body: Its body fields.
        transcript: The signed bytes (responses and session keys bind to them).
    """

    action: str
    device_id: str
    issued_at: datetime
    nonce: bytes
    body: Mapping[str, Any]
    transcript: bytes = field(repr=False)


class SeenNonces(Protocol):
    """Remembers request nonces until they could no longer pass the timestamp check."""

    def remember(self, device_id: str, nonce: bytes, expires_at: datetime, now: datetime) -> bool:
        """Record ``nonce`` for ``device_id``; False if it was already recorded (a replay).

        Must be atomic: of two concurrent calls with the same nonce, exactly one returns True.
        """
        ...


class InMemorySeenNonces:
    """:class:`SeenNonces` in process memory (unit tests, single-process tools)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, bytes], datetime] = {}
        self._lock = threading.Lock()

    def remember(self, device_id: str, nonce: bytes, expires_at: datetime, now: datetime) -> bool:
        with self._lock:
            for key in [k for k, until in self._seen.items() if until <= now]:
                del self._seen[key]
            if (device_id, nonce) in self._seen:
                return False
            self._seen[(device_id, nonce)] = expires_at
            return True


def new_nonce() -> bytes:
    """A fresh random request nonce."""
    return secrets.token_bytes(NONCE_BYTES)


def signing_message(action: str, request: bytes) -> bytes:
    """The bytes a device signs: the per-action domain prefix, then the encoded request."""
    return _DOMAIN + action.encode() + b"\x00" + request


def encode_signed_request(action: str, device_id: str, body: Mapping[str, Any], ts: int, nonce: bytes) -> bytes:
    """Canonical CBOR encoding of a request (what the device signs, after the prefix).

    Raises:
        MalformedError: unknown action or a body that does not fit its spec.
    """
    request = {"v": VERSION, "action": action, "device_id": device_id, "ts": ts, "nonce": nonce,
               "body": dict(body)}
    _check_request(request)
    return bytes(cbor2.dumps(request, canonical=True))


@dataclass(frozen=True)
class OutgoingRequest:
    """A signed request ready to send.

    Attributes:
        wire: The JSON body to POST.
        transcript: The signed bytes (to check the hub's signed response).
    """

    wire: dict[str, str]
    transcript: bytes = field(repr=False)


def sign_device_request(action: str, device_id: str, body: Mapping[str, Any], *, now: datetime,
                        sign: Callable[[bytes], bytes], nonce: bytes | None = None) -> OutgoingRequest:
    """Build and sign a device request (the agent's side).

    Args:
        action: One of :data:`DEVICE_REQUEST_ACTIONS`.
        device_id: The signing device.
        body: The action's fields.
        now: Signing time.
        sign: Signs bytes with the device's identity key (inside its key store).
        nonce: Fixed nonce (tests only); fresh random when None.

    Raises:
        MalformedError: unknown action or bad body.
    """
    encoded = encode_signed_request(action, device_id, body, int(now.timestamp()),
                                    new_nonce() if nonce is None else nonce)
    message = signing_message(action, encoded)
    return OutgoingRequest({"request": b64e(encoded), "signature": b64e(sign(message))}, message)


def _check_field(name: str, spec: FieldSpec, value: Any) -> None:
    if spec.kind == "bytes":
        ok = isinstance(value, bytes) and len(value) <= spec.max_length and \
            (not spec.exact_length or len(value) == spec.exact_length)
    elif spec.kind == "text":
        ok = isinstance(value, str) and len(value) <= spec.max_length
    elif spec.kind == "uint":
        ok = type(value) is int and spec.min_value <= value <= spec.max_value
    elif spec.kind == "text_list":
        ok = isinstance(value, list) and 1 <= len(value) <= spec.max_length and \
            all(isinstance(v, str) and 0 < len(v) <= 64 for v in value)
    else:
        ok = False
    if not ok:
        raise MalformedError(f"request body field {name!r} has the wrong type or size")


def _check_request(request: Any) -> RequestSpec:
    if not isinstance(request, dict) or set(request) != _ENVELOPE_KEYS:
        raise MalformedError("signed request must be a map of v, action, device_id, ts, nonce, body")
    if request["v"] != VERSION or type(request["v"]) is not int:
        raise MalformedError("unsupported signed request version")
    action = request["action"]
    spec = DEVICE_REQUEST_ACTIONS.get(action) if isinstance(action, str) else None
    if spec is None:
        raise MalformedError("unknown device request action")
    device_id = request["device_id"]
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise MalformedError("bad device id in signed request")
    ts = request["ts"]
    if type(ts) is not int or not 0 <= ts < 2**40:
        raise MalformedError("signed request timestamp must be POSIX seconds")
    nonce = request["nonce"]
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise MalformedError(f"signed request nonce must be {NONCE_BYTES} bytes")
    body = request["body"]
    if not isinstance(body, dict) or not set(spec.fields) - spec.optional <= set(body) <= set(spec.fields):
        raise MalformedError(f"{action} request body must have exactly: {', '.join(sorted(spec.fields)) or 'nothing'}"
                             + (f" (optional: {', '.join(sorted(spec.optional))})" if spec.optional else ""))
    for name, fspec in spec.fields.items():
        if name in body:
            _check_field(name, fspec, body[name])
    return spec


def parse_signed_request(request: Any, signature: Any, *,
                         limits: SignedRequestLimits | None = None) -> SignedRequest:
    """Parse the wire form (``request``, ``signature``: base64url text) strictly.

    The size limit applies before decoding; the CBOR must be canonical and
    match the action's schema exactly.

    Raises:
        MalformedError: not a well-formed signed request.
    """
    limits = limits or SignedRequestLimits()
    if not isinstance(request, str) or len(request) > (limits.max_request_bytes * 4 + 2) // 3 + 4:
        raise MalformedError("signed request missing or too large")
    raw = b64d(request, what="request", max_length=limits.max_request_bytes)
    if len(raw) > limits.max_request_bytes:
        raise MalformedError("signed request too large")
    sig = b64d(signature, what="signature", length=64, max_length=64)
    try:
        decoded = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        raise MalformedError("signed request is not valid CBOR") from None
    _check_request(decoded)
    try:
        canonical = cbor2.dumps(decoded, canonical=True)
    except (cbor2.CBOREncodeError, ValueError, TypeError):
        raise MalformedError("signed request is not canonical CBOR") from None
    if canonical != raw:
        raise MalformedError("signed request is not canonical CBOR")
    return SignedRequest(decoded["action"], decoded["device_id"], decoded["ts"], decoded["nonce"],
                         decoded["body"], signing_message(decoded["action"], raw), sig)


def verify_signed_request(request: SignedRequest, device: DeviceView | None, now: datetime,
                          limits: SignedRequestLimits | None = None, *, nonces: SeenNonces,
                          expected_action: str | None = None) -> VerifiedRequest:
    """Every check a device request must pass, in one place.

    Order matters: nothing about the device's state is revealed before the
    signature verifies, and a nonce is recorded only for a request that
    passed every other check (so forgeries cannot fill the nonce store).

    Args:
        request: The parsed request.
        device: The registry's view of ``request.device_id`` (None: unknown).
        now: The hub's clock (timezone-aware).
        limits: Verification bounds.
        nonces: Seen-nonce store.
        expected_action: The action of the route the request arrived on.

    Raises:
        MalformedError: the request is for another action or device view.
        UnknownDeviceError: no such device.
        RevokedError: the device has no identity key or is not active.
        IntegrityError: the signature does not verify (``forged``).
        StaleError: the timestamp is outside the window (``stale``).
        ExpiredError: the operational certificate has expired (``expired``).
        ReplayError: the nonce was already used (``replay``).
    """
    limits = limits or SignedRequestLimits()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if expected_action is not None and request.action != expected_action:
        raise MalformedError(f"signed request is for {request.action!r}, not {expected_action!r}")
    if device is None:
        raise UnknownDeviceError("unknown device")
    if device.device_id != request.device_id:
        raise MalformedError("device view is for another device")
    if device.identity_public_key is None:
        raise RevokedError(f"device {device.device_id!r} is {device.status}")
    verify_signature(device.identity_public_key, request.signature, request.message)
    issued_at = datetime.fromtimestamp(request.ts, tz=UTC)
    skew = timedelta(seconds=limits.max_clock_skew_s)
    if not now - skew <= issued_at <= now + skew:
        raise StaleError("signed request timestamp outside the allowed window")
    if device.status != "active":
        raise RevokedError(f"device {device.device_id!r} is {device.status}")
    spec = DEVICE_REQUEST_ACTIONS[request.action]
    if spec.requires_valid_certificate and (device.cert_not_after is None or device.cert_not_after <= now):
        raise ExpiredError(f"device {device.device_id!r} has no valid operational certificate")
    if not nonces.remember(device.device_id, request.nonce, issued_at + skew, now):
        raise ReplayError("signed request nonce already used")
    return VerifiedRequest(request.action, request.device_id, issued_at, request.nonce, request.body,
                           request.message)
