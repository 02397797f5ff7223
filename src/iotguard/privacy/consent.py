"""Consent per data subject and purpose, and the configuration message that carries it.

The hub is the source of truth: the device owner grants or withdraws a
purpose through the API or CLI, the hub records the change (and audits
it), then pushes a :class:`ConsentConfig` to each of the subject's devices.
The device applies it only if its version is newer than what it holds
(a replayed older configuration cannot re-enable a withdrawn purpose),
enforces it in its pipeline immediately, and answers with a
:class:`ConsentAck` binding the exact configuration it applied.

Which purposes need a grant: a purpose whose legal basis is ``consent``
is off until granted. A purpose under another basis (``contract``,
``legal_obligation``...) is on unless the subject has objected to it
(a withdrawal). Either way a withdrawal stops collection at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import cbor2

from iotguard.clock import utc_from_wire
from iotguard.errors import ConfigError, ConsentError, MalformedError, RollbackError
from iotguard.privacy.contract import DataContract, LegalBasis

__all__ = [
    "CONSENT_MESSAGE_VERSION",
    "MAX_CONSENT_MESSAGE_BYTES",
    "ConsentAck",
    "ConsentConfig",
    "ConsentDecision",
    "ConsentState",
]

#: Version of the consent configuration / acknowledgement message format.
CONSENT_MESSAGE_VERSION = 1
#: Consent messages larger than this are refused before decoding.
MAX_CONSENT_MESSAGE_BYTES = 8192
_MAX_PURPOSES = 64


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ConfigError("time must be timezone-aware UTC")
    return at.astimezone(UTC)


@dataclass(frozen=True)
class ConsentDecision:
    """The subject's latest decision about one purpose."""

    granted: bool
    at: datetime


@dataclass(frozen=True)
class ConsentState:
    """What one data subject has decided, purpose by purpose. Immutable.

    Each change returns a new state with ``version`` one higher.
    """

    subject_id: str
    version: int = 0
    decisions: Mapping[str, ConsentDecision] = field(default_factory=lambda: MappingProxyType({}))

    def _with(self, purpose: str, granted: bool, at: datetime) -> ConsentState:
        at = _aware(at)
        prev = self.decisions.get(purpose)
        if prev is not None and at < prev.at:
            raise RollbackError(f"consent change for {purpose!r} is older than the recorded one")
        d = dict(self.decisions)
        d[purpose] = ConsentDecision(granted, at)
        return replace(self, version=self.version + 1, decisions=MappingProxyType(d))

    def grant(self, purpose: str, at: datetime) -> ConsentState:
        """Record consent to ``purpose`` at ``at``.

        Raises:
            RollbackError: ``at`` is older than the purpose's last decision.
        """
        return self._with(purpose, True, at)

    def withdraw(self, purpose: str, at: datetime) -> ConsentState:
        """Record withdrawal of (or objection to) ``purpose`` at ``at``.

        Raises:
            RollbackError: ``at`` is older than the purpose's last decision.
        """
        return self._with(purpose, False, at)

    def require(self, contract: DataContract, purpose: str, at: datetime) -> None:
        """Check that collecting for ``purpose`` at ``at`` is permitted.

        Raises:
            PolicyDenied: the contract declares no such purpose.
            ConsentError: the purpose needs consent and has none at ``at``,
                or the subject withdrew or objected.
        """
        spec = contract.purpose(purpose)
        at = _aware(at)
        d = self.decisions.get(purpose)
        if d is not None and d.at > at:
            # A decision from the future (clock skew) is not yet in force:
            # the earlier state is unknown here, so fail closed.
            raise ConsentError(f"consent for {purpose!r} is not yet in force")
        if d is not None and not d.granted:
            raise ConsentError(f"subject withdrew consent for {purpose!r}")
        if spec.legal_basis is LegalBasis.CONSENT and d is None:
            raise ConsentError(f"no consent for {purpose!r}")

    def permitted_purposes(self, contract: DataContract, at: datetime) -> list[str]:
        """Purposes of ``contract`` that may collect at ``at``, sorted."""
        out = []
        for name in contract.purposes:
            try:
                self.require(contract, name, at)
            except ConsentError:
                continue
            out.append(name)
        return sorted(out)

    def to_config(self, device_id: str, issued_at: datetime) -> ConsentConfig:
        """The configuration message the hub pushes to ``device_id``."""
        return ConsentConfig(device_id, self, _aware(issued_at))


def _ts(at: datetime) -> int:
    return int(_aware(at).timestamp())


@dataclass(frozen=True)
class ConsentConfig:
    """Hub -> device consent configuration.

    Wire form (canonical CBOR map)::

        {"v": 1, "type": "consent-config", "device": str, "subject": str,
         "version": uint, "issued_at": uint seconds,
         "purposes": {purpose: {"granted": bool, "at": uint seconds}}}
    """

    device_id: str
    state: ConsentState
    issued_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """Plain form of the message."""
        return {
            "v": CONSENT_MESSAGE_VERSION,
            "type": "consent-config",
            "device": self.device_id,
            "subject": self.state.subject_id,
            "version": self.state.version,
            "issued_at": _ts(self.issued_at),
            "purposes": {p: {"granted": d.granted, "at": _ts(d.at)} for p, d in self.state.decisions.items()},
        }

    def encode(self) -> bytes:
        """Canonical CBOR."""
        return cbor2.dumps(self.to_dict(), canonical=True)

    def digest(self) -> bytes:
        """SHA-256 of :meth:`encode` (what the acknowledgement binds)."""
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> ConsentConfig:
        """Strictly decode a configuration message.

        Raises:
            MalformedError: not a well-formed consent configuration.
        """
        obj = _load(data)
        if set(obj) != {"v", "type", "device", "subject", "version", "issued_at", "purposes"}:
            raise MalformedError("consent config has missing or unknown keys")
        if obj["v"] != CONSENT_MESSAGE_VERSION or obj["type"] != "consent-config":
            raise MalformedError("not a consent config of a known version")
        device, subject, version, issued = obj["device"], obj["subject"], obj["version"], obj["issued_at"]
        if not (
            isinstance(device, str)
            and isinstance(subject, str)
            and 0 < len(device) <= 64
            and 0 < len(subject) <= 128
        ):
            raise MalformedError("consent config device/subject must be short text")
        _uint(version, "version")
        purposes = obj["purposes"]
        if not isinstance(purposes, dict) or len(purposes) > _MAX_PURPOSES:
            raise MalformedError("consent config purposes must be a bounded map")
        decisions: dict[str, ConsentDecision] = {}
        for name, d in purposes.items():
            if not isinstance(name, str) or not 0 < len(name) <= 32:
                raise MalformedError("purpose names must be short text")
            if not isinstance(d, dict) or set(d) != {"granted", "at"} or not isinstance(d["granted"], bool):
                raise MalformedError(f"consent decision for {name!r} is malformed")
            decisions[name] = ConsentDecision(d["granted"], utc_from_wire(d["at"], "at"))
        state = ConsentState(subject, version, MappingProxyType(decisions))
        return cls(device, state, utc_from_wire(issued, "issued_at"))

    def apply_to(self, current: ConsentState | None, device_id: str) -> ConsentState:
        """Device side: the state to enforce after receiving this message.

        Raises:
            MalformedError: the message is for another device, or another subject
                than the one already configured.
            RollbackError: its version is not newer than ``current``'s.
        """
        if self.device_id != device_id:
            raise MalformedError("consent config is for another device")
        # A device that has never received a configuration takes the hub's subject.
        if current is not None and (current.version > 0 or current.decisions):
            if current.subject_id != self.state.subject_id:
                raise MalformedError("consent config is for another data subject")
            if self.state.version <= current.version:
                raise RollbackError(
                    f"consent config version {self.state.version} is not newer than {current.version}"
                )
        return self.state

    def acknowledge(self, applied_at: datetime) -> ConsentAck:
        """Device side: the acknowledgement of this exact configuration."""
        return ConsentAck(self.device_id, self.state.version, self.digest(), _aware(applied_at))


@dataclass(frozen=True)
class ConsentAck:
    """Device -> hub acknowledgement.

    Wire form: ``{"v": 1, "type": "consent-ack", "device": str, "version":
    uint, "config_sha256": bytes(32), "applied_at": uint seconds}``.
    """

    device_id: str
    version: int
    config_sha256: bytes
    applied_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """Plain form of the message."""
        return {
            "v": CONSENT_MESSAGE_VERSION,
            "type": "consent-ack",
            "device": self.device_id,
            "version": self.version,
            "config_sha256": self.config_sha256,
            "applied_at": _ts(self.applied_at),
        }

    def encode(self) -> bytes:
        """Canonical CBOR."""
        return cbor2.dumps(self.to_dict(), canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> ConsentAck:
        """Strictly decode an acknowledgement.

        Raises:
            MalformedError: not a well-formed acknowledgement.
        """
        obj = _load(data)
        if set(obj) != {"v", "type", "device", "version", "config_sha256", "applied_at"}:
            raise MalformedError("consent ack has missing or unknown keys")
        if obj["v"] != CONSENT_MESSAGE_VERSION or obj["type"] != "consent-ack":
            raise MalformedError("not a consent ack of a known version")
        if (
            not isinstance(obj["device"], str)
            or not isinstance(obj["config_sha256"], bytes)
            or len(obj["config_sha256"]) != 32
        ):
            raise MalformedError("consent ack device or digest malformed")
        _uint(obj["version"], "version")
        return cls(
            obj["device"],
            obj["version"],
            obj["config_sha256"],
            utc_from_wire(obj["applied_at"], "applied_at"),
        )

    def verify_for(self, config: ConsentConfig) -> None:
        """Hub side: check this acknowledges exactly ``config``.

        Raises:
            ConsentError: the device acknowledged a different configuration.
        """
        if (
            self.device_id != config.device_id
            or self.version != config.state.version
            or self.config_sha256 != config.digest()
        ):
            raise ConsentError("device acknowledged a different consent configuration")


def _uint(v: Any, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**53:
        raise MalformedError(f"{what} must be a non-negative integer")


def _load(data: bytes) -> dict[Any, Any]:
    if len(data) > MAX_CONSENT_MESSAGE_BYTES:
        raise MalformedError("consent message too large")
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, RecursionError, MemoryError) as exc:
        raise MalformedError(f"consent message is not valid CBOR: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise MalformedError("consent message must be a map")
    return obj
