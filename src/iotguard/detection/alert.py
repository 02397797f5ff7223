"""Alerts: what a detector found, as data.

An :class:`Alert` names the device, the detector, a score, the severity, the
time window it covers and the evidence (a few named scalars). It has one
stable encoding, deterministic CBOR (RFC 8949 core deterministic: a map
with sorted keys, times as integer microseconds), and a matching canonical
JSON form; its ``alert_id`` is the SHA-256 of the CBOR bytes, so an audit
entry and an action can name the alert that caused it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import cbor2

from iotguard.errors import MalformedError

__all__ = ["ALERT_VERSION", "MAX_ALERT_BYTES", "Alert", "Severity"]

ALERT_VERSION = 1
MAX_ALERT_BYTES = 4096
_MAX_EVIDENCE = 16
_MAX_TEXT = 128
Scalar = str | int | float | bool


class Severity(IntEnum):
    """How urgent an alert is (ordered)."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, name: str) -> Severity:
        """Severity by lower-case name.

        Raises:
            MalformedError: ``alert_bad_severity``.
        """
        try:
            return cls[name.upper()]
        except KeyError:
            raise MalformedError(f"unknown severity {name[:16]!r}", code="alert_bad_severity") from None


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT or not value.isprintable():
        raise MalformedError(f"{what} empty, too long or not printable", code="alert_malformed")
    return value


@dataclass(frozen=True, slots=True)
class Alert:
    """One finding of a detector about one device.

    Attributes:
        device: Device id (or the address, for hosts that are not devices).
        detector: Detector name (``autoencoder``, ``scan_fanout``, ...).
        score: Detector score; for the learned baseline, above 1 means above
            the calibrated threshold.
        severity: How urgent.
        window_start_us: Start of the observed window, POSIX microseconds.
        window_end_us: End of the observed window, POSIX microseconds.
        evidence: Named scalars that explain the alert (sorted by name).
    """

    device: str
    detector: str
    score: float
    severity: Severity
    window_start_us: int
    window_end_us: int
    evidence: tuple[tuple[str, Scalar], ...] = ()

    def __post_init__(self) -> None:
        _text(self.device, "device")
        _text(self.detector, "detector")
        if not math.isfinite(self.score):
            raise MalformedError("score is not finite", code="alert_malformed")
        if not 0 <= self.window_start_us <= self.window_end_us < 2**63:
            raise MalformedError("window out of order or range", code="alert_malformed")
        if len(self.evidence) > _MAX_EVIDENCE:
            raise MalformedError("too much evidence", code="alert_malformed")
        names = [k for k, _ in self.evidence]
        if names != sorted(set(names)):
            raise MalformedError("evidence names not sorted and unique", code="alert_malformed")
        for key, value in self.evidence:
            _text(key, "evidence name")
            if isinstance(value, str):
                _text(value, "evidence value")
            elif isinstance(value, float) and not math.isfinite(value):
                raise MalformedError("evidence value not finite", code="alert_malformed")
            elif not isinstance(value, int | float | bool):
                raise MalformedError("evidence value not a scalar", code="alert_malformed")

    @classmethod
    def create(cls, device: str, detector: str, score: float, severity: Severity, window: tuple[float, float],
               evidence: Mapping[str, Scalar] | None = None) -> Alert:
        """Build an alert from a window in POSIX seconds and an evidence mapping."""
        return cls(device, detector, float(score), severity, round(window[0] * 1e6),
                   round(window[1] * 1e6), tuple(sorted((evidence or {}).items())))

    def as_dict(self) -> dict[str, Any]:
        """The encoded fields (the same for CBOR and JSON)."""
        return {
            "v": ALERT_VERSION, "device": self.device, "detector": self.detector, "score": self.score,
            "severity": self.severity.name.lower(), "window": [self.window_start_us, self.window_end_us],
            "evidence": dict(self.evidence),
        }

    def to_cbor(self) -> bytes:
        """Deterministic CBOR encoding."""
        out: bytes = cbor2.dumps(self.as_dict(), canonical=True)
        return out

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces)."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def alert_id(self) -> str:
        """Hex SHA-256 of the CBOR encoding."""
        return hashlib.sha256(self.to_cbor()).hexdigest()

    @classmethod
    def from_dict(cls, obj: object) -> Alert:
        """Decode the fields of :meth:`as_dict`, strictly.

        Raises:
            MalformedError: ``alert_malformed`` or ``alert_bad_severity``.
        """
        keys = {"v", "device", "detector", "score", "severity", "window", "evidence"}
        if not isinstance(obj, dict) or set(obj) != keys or obj["v"] != ALERT_VERSION:
            raise MalformedError("not a version 1 alert", code="alert_malformed")
        window, evidence, score = obj["window"], obj["evidence"], obj["score"]
        if not (isinstance(window, list) and len(window) == 2 and all(type(w) is int for w in window)):
            raise MalformedError("bad window", code="alert_malformed")
        if not isinstance(evidence, dict) or isinstance(score, bool) or not isinstance(score, int | float):
            raise MalformedError("bad evidence or score", code="alert_malformed")
        return cls(_text(obj["device"], "device"), _text(obj["detector"], "detector"), float(score),
                   Severity.parse(_text(obj["severity"], "severity")), window[0], window[1],
                   tuple(sorted(evidence.items())))

    @classmethod
    def from_cbor(cls, data: bytes) -> Alert:
        """Decode :meth:`to_cbor` bytes; rejects anything that is not the canonical encoding.

        Raises:
            MalformedError: ``alert_malformed`` (also for oversized or non-canonical input).
        """
        if len(data) > MAX_ALERT_BYTES:
            raise MalformedError("alert too large", code="alert_malformed")
        try:
            obj = cbor2.loads(data)
        except Exception as exc:  # cbor2 raises several types for bad input
            raise MalformedError("alert is not CBOR", code="alert_malformed") from exc
        alert = cls.from_dict(obj)
        if alert.to_cbor() != data:
            raise MalformedError("alert CBOR is not canonical", code="alert_malformed")
        return alert

    @classmethod
    def from_json(cls, text: str) -> Alert:
        """Decode :meth:`to_json` text.

        Raises:
            MalformedError: ``alert_malformed``.
        """
        if len(text) > MAX_ALERT_BYTES:
            raise MalformedError("alert too large", code="alert_malformed")
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise MalformedError("alert is not JSON", code="alert_malformed") from exc
        return cls.from_dict(obj)
