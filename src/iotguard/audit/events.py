"""Audit events: what a log leaf says, and its canonical CBOR encoding.

A leaf is the canonical CBOR (RFC 8949 section 4.2.3 length-first map key
order, shortest integer and float forms) of the map::

    {"v": 1, "type": str, "time": int (microseconds since the UNIX epoch, UTC),
     "actor": str, "subject": str, "details": map, "prior": {str: bytes}}

``prior`` holds digests of the state the event changes (e.g. the SHA-256 of
the policy set before a policy change), so that a chain of events can be
checked against the states they claim to replace. Decoding is strict: a
leaf that is not exactly the canonical encoding of a valid event is
rejected, so one event has exactly one leaf and one leaf hash.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import cbor2

from iotguard.errors import MalformedError

__all__ = [
    "MAX_DETAIL_DEPTH",
    "MAX_LEAF_BYTES",
    "AuditEvent",
    "EventType",
    "rejected_envelopes",
]

#: Largest encoded leaf accepted (and produced).
MAX_LEAF_BYTES = 16 * 1024
#: Deepest nesting of lists and maps inside ``details``.
MAX_DETAIL_DEPTH = 6
#: Longest actor, subject or type string.
MAX_NAME_LENGTH = 256

_FORMAT = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_KEYS = frozenset({"v", "type", "time", "actor", "subject", "details", "prior"})


class EventType(StrEnum):
    """The security- and privacy-relevant events iotguard records.

    Components may log other dotted lower-case types; these are the ones the
    platform itself emits and documents.
    """

    DEVICE_MANUFACTURED = "device.manufactured"
    DEVICE_ENROLLED = "device.enrolled"
    CERT_ISSUED = "cert.issued"
    CERT_RENEWED = "cert.renewed"
    CERT_REVOKED = "cert.revoked"
    AUTH_FAILED = "auth.failed"
    ENVELOPES_REJECTED = "envelopes.rejected"
    POLICY_CHANGED = "policy.changed"
    DEVICE_QUARANTINED = "device.quarantined"
    DEVICE_RELEASED = "device.released"
    FIRMWARE_RELEASED = "firmware.released"
    FIRMWARE_INSTALLED = "firmware.installed"
    ATTESTATION_RESULT = "attestation.result"
    ATTESTATION_KEY_CERTIFIED = "attestation.key_certified"
    CONSENT_CHANGED = "consent.changed"
    DATA_ERASED = "data.erased"
    PRIVACY_BUDGET_SPENT = "privacy_budget.spent"
    CHECKPOINT_ANCHORED = "log.checkpoint_anchored"


def _check_value(value: Any, depth: int) -> None:
    if depth > MAX_DETAIL_DEPTH:
        raise MalformedError("event details are nested too deeply")
    if value is None or isinstance(value, bool | str | bytes):
        return
    if isinstance(value, int):
        if not -(1 << 64) <= value < (1 << 64):
            raise MalformedError("integer in event details out of range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MalformedError("non-finite float in event details")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise MalformedError("event detail keys must be strings")
            _check_value(v, depth + 1)
        return
    raise MalformedError(f"unsupported value in event details: {type(value).__name__}")


def _key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return len(raw), raw


_PLAIN = frozenset({str, int, bytes, bool, type(None)})


def _canonical(value: Any) -> tuple[Any, bool]:
    """Copy ``value`` with every map in canonical key order; report whether it holds a float."""
    if type(value) in _PLAIN:
        return value, False
    if isinstance(value, float):
        return value, True
    if isinstance(value, Mapping):
        return _canonical_map(value)
    has_float = False
    items = []
    for v in value:
        c, f = _canonical(v)
        items.append(c)
        has_float = has_float or f
    return items, has_float


def _canonical_map(value: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    out: dict[str, Any] = {}
    has_float = False
    for k in sorted(value, key=_key_order):
        v = value[k]
        if type(v) in _PLAIN:
            out[k] = v
        else:
            out[k], f = _canonical(v)
            has_float = has_float or f
    return out, has_float


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME_LENGTH:
        raise MalformedError(f"event {what} must be a string of at most {MAX_NAME_LENGTH} characters")
    return value


@dataclass(frozen=True)
class AuditEvent:
    """One audit-log entry.

    Attributes:
        type: Dotted lower-case event type (see :class:`EventType`).
        time: When it happened (timezone-aware; stored as UTC microseconds).
        actor: Who or what caused it (operator name, ``hub.ingest``, a device id).
        subject: What it is about; the device id for device events, so a
            device's chain of custody is a lookup by subject.
        details: Event-specific facts (strings, numbers, bytes, lists, maps).
        prior: Digests of the state this event replaces, by name.
    """

    type: str
    time: datetime
    actor: str
    subject: str
    details: Mapping[str, Any] = field(default_factory=dict)
    prior: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not _TYPE_RE.match(self.type) or len(self.type) > 64:
            raise MalformedError("event type must be dotted lower-case, e.g. 'device.enrolled'")
        if not isinstance(self.time, datetime) or self.time.tzinfo is None:
            raise MalformedError("event time must be a timezone-aware datetime")
        _check_name(self.actor, "actor")
        _check_name(self.subject, "subject")
        if not isinstance(self.details, Mapping):
            raise MalformedError("event details must be a map")
        _check_value(self.details, 0)
        if not isinstance(self.prior, Mapping) or not all(
            isinstance(k, str) and isinstance(v, bytes) and len(v) <= 64 for k, v in self.prior.items()
        ):
            raise MalformedError("prior-state digests must map names to digests")

    def to_cbor(self) -> bytes:
        """The canonical CBOR leaf of this event.

        Raises:
            MalformedError: the encoding exceeds :data:`MAX_LEAF_BYTES`.
        """
        delta = self.time - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        details, has_float = _canonical_map(self.details)
        # Map keys in canonical (length-first) order, so the plain encoder's
        # insertion order is the canonical one; floats need the canonical
        # encoder's shortest-form rule.
        body = {
            "v": _FORMAT,
            "time": micros,
            "type": str(self.type),
            "actor": self.actor,
            "prior": _canonical_map(self.prior)[0] if self.prior else {},
            "details": details,
            "subject": self.subject,
        }
        data: bytes = cbor2.dumps(body, canonical=has_float)
        if len(data) > MAX_LEAF_BYTES:
            raise MalformedError("audit event is too large")
        return data

    @classmethod
    def from_cbor(cls, data: bytes) -> AuditEvent:
        """Decode a leaf strictly (it must be the canonical encoding of a valid event).

        Raises:
            MalformedError: not a canonical, valid audit event.
        """
        if len(data) > MAX_LEAF_BYTES:
            raise MalformedError("audit leaf is too large")
        try:
            raw = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
            raise MalformedError("audit leaf is not CBOR") from None
        if not isinstance(raw, dict) or set(raw) != _KEYS or raw["v"] != _FORMAT:
            raise MalformedError("audit leaf has the wrong fields or version")
        micros = raw["time"]
        if not isinstance(micros, int) or isinstance(micros, bool) or not 0 <= micros < (1 << 62):
            raise MalformedError("audit leaf time out of range")
        try:
            when = _EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            raise MalformedError("audit leaf time out of range") from None
        if not isinstance(raw["details"], dict) or not isinstance(raw["prior"], dict):
            raise MalformedError("audit leaf details and prior must be maps")
        event = cls(raw["type"], when, raw["actor"], raw["subject"], raw["details"], raw["prior"])
        if event.to_cbor() != data:
            raise MalformedError("audit leaf is not canonically encoded")
        return event


def rejected_envelopes(
    device_id: str,
    reason: str,
    count: int,
    first_at: datetime,
    last_at: datetime,
    *,
    actor: str = "hub.ingest",
) -> AuditEvent:
    """One aggregated entry for ``count`` envelopes from a device rejected for one reason.

    Ingest counts rejections per (device, reason) and logs one entry per
    aggregation window rather than one per envelope, so a flood of forged
    messages cannot flood the log.
    """
    return AuditEvent(
        EventType.ENVELOPES_REJECTED,
        last_at,
        actor,
        device_id,
        {"reason": reason, "count": count, "first_at": first_at.isoformat(), "last_at": last_at.isoformat()},
    )
