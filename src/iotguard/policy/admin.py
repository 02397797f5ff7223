"""Policy operations: stored versions, activation, quarantine, audit events.

Versions are immutable; activating one records an activation and loads it
into the engine. Nothing that does not validate against the schema is ever
stored as activatable or loaded. Every change is reported to a
:class:`PolicyAuditSink` (the audit log implements it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from iotguard.clock import Clock, SystemClock
from iotguard.errors import ConfigError
from iotguard.policy.engine import PolicyEngine
from iotguard.policy.policyset import (
    PolicyDiff,
    PolicySchema,
    PolicySet,
    PolicyValidationError,
    default_schema,
    diff_policy_sets,
    validate,
)
from iotguard.policy.posture import PostureStore

__all__ = [
    "InMemoryPolicyRepository",
    "LoggingAuditSink",
    "PolicyActivation",
    "PolicyAdministration",
    "PolicyAuditSink",
    "PolicyRepository",
    "PolicyVersion",
    "RecordingAuditSink",
]

_log = logging.getLogger(__name__)


class PolicyAuditSink(Protocol):
    """Where policy events go (the audit log implements this)."""

    def record(self, event_type: str, details: Mapping[str, Any]) -> None:
        """Record one event; ``details`` holds JSON-serialisable values."""
        ...


class LoggingAuditSink:
    """Default sink: logs events at INFO until an audit log is wired in."""

    def record(self, event_type: str, details: Mapping[str, Any]) -> None:
        _log.info("policy event %s %s", event_type, dict(details))


class RecordingAuditSink:
    """Keeps events in a list (tests, dry runs)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, event_type: str, details: Mapping[str, Any]) -> None:
        self.events.append((event_type, dict(details)))


@dataclass(frozen=True)
class PolicyVersion:
    """One stored policy set.

    Attributes:
        version: Sequence number (1, 2, ...).
        text: Cedar text.
        digest: SHA-256 of the text.
        author: Who stored it.
        comment: Why.
        created_at: When.
    """

    version: int
    text: str
    digest: str
    author: str
    comment: str
    created_at: datetime

    @property
    def policy_set(self) -> PolicySet:
        """The text as a :class:`PolicySet`."""
        return PolicySet(self.text)


@dataclass(frozen=True)
class PolicyActivation:
    """One activation: ``version`` became active, replacing ``previous``."""

    version: int
    previous: int | None
    actor: str
    activated_at: datetime


class PolicyRepository(Protocol):
    """Persistence of policy versions and activations.

    ``hub.policy_store.SqlPolicyRepository`` and
    :class:`InMemoryPolicyRepository` implement it and pass one contract test.
    """

    def add_version(self, text: str, digest: str, author: str, comment: str, at: datetime) -> PolicyVersion:
        """Store a new version; returns it with its number."""
        ...

    def get_version(self, version: int) -> PolicyVersion:
        """A stored version.

        Raises:
            ConfigError: No such version.
        """
        ...

    def versions(self) -> list[PolicyVersion]:
        """All versions, oldest first."""
        ...

    def record_activation(self, version: int, actor: str, at: datetime) -> PolicyActivation:
        """Record that ``version`` is now active."""
        ...

    def activations(self) -> list[PolicyActivation]:
        """Activation history, oldest first."""
        ...

    def active_version(self) -> PolicyVersion | None:
        """The active version, or ``None`` if nothing was activated."""
        ...


class InMemoryPolicyRepository:
    """:class:`PolicyRepository` in memory (tests, single-process tools)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: list[PolicyVersion] = []
        self._activations: list[PolicyActivation] = []

    def add_version(self, text: str, digest: str, author: str, comment: str, at: datetime) -> PolicyVersion:
        with self._lock:
            v = PolicyVersion(len(self._versions) + 1, text, digest, author, comment, at)
            self._versions.append(v)
            return v

    def get_version(self, version: int) -> PolicyVersion:
        if not 1 <= version <= len(self._versions):
            raise ConfigError(f"no policy version {version}")
        return self._versions[version - 1]

    def versions(self) -> list[PolicyVersion]:
        return list(self._versions)

    def record_activation(self, version: int, actor: str, at: datetime) -> PolicyActivation:
        self.get_version(version)
        with self._lock:
            previous = self._activations[-1].version if self._activations else None
            act = PolicyActivation(version, previous, actor, at)
            self._activations.append(act)
            return act

    def activations(self) -> list[PolicyActivation]:
        return list(self._activations)

    def active_version(self) -> PolicyVersion | None:
        if not self._activations:
            return None
        return self.get_version(self._activations[-1].version)


class PolicyAdministration:
    """Propose, activate and roll back policy versions; quarantine devices.

    Args:
        repository: Where versions and activations are stored.
        schema: Schema every version is validated against.
        audit: Sink for policy events (default: logging).
        clock: Time source.
    """

    def __init__(
        self,
        repository: PolicyRepository,
        *,
        schema: PolicySchema | None = None,
        audit: PolicyAuditSink | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.repository = repository
        self._schema = schema or default_schema()
        self._audit: PolicyAuditSink = audit or LoggingAuditSink()
        self._clock: Clock = clock or SystemClock()

    def propose(self, policy_set: PolicySet, *, author: str, comment: str = "") -> PolicyVersion:
        """Validate and store a new version (not yet active).

        Raises:
            PolicyValidationError: The set does not validate; it is not stored.
        """
        try:
            validate(policy_set, self._schema)
        except PolicyValidationError as exc:
            self._audit.record(
                "policy.rejected", {"author": author, "digest": policy_set.digest, "errors": exc.errors}
            )
            raise
        v = self.repository.add_version(
            policy_set.text, policy_set.digest, author, comment, self._clock.now()
        )
        self._audit.record(
            "policy.version_added",
            {"version": v.version, "digest": v.digest, "author": author, "comment": comment},
        )
        return v

    def activate(self, version: int, *, actor: str, engine: PolicyEngine | None = None) -> PolicyActivation:
        """Make a stored version active (and load it into ``engine``).

        The version is validated again: a schema change since it was stored
        must not let an invalid set become active.

        Raises:
            ConfigError: No such version.
            PolicyValidationError: It does not validate; nothing changes.
        """
        stored = self.repository.get_version(version)
        policy_set = stored.policy_set
        try:
            validate(policy_set, self._schema)
            if engine is not None:
                engine.load(policy_set, version=version)
        except PolicyValidationError as exc:
            self._audit.record(
                "policy.activation_refused", {"version": version, "actor": actor, "errors": exc.errors}
            )
            raise
        act = self.repository.record_activation(version, actor, self._clock.now())
        self._audit.record(
            "policy.activated",
            {"version": version, "previous": act.previous, "actor": actor, "digest": stored.digest},
        )
        return act

    def propose_and_activate(
        self, policy_set: PolicySet, *, author: str, comment: str = "", engine: PolicyEngine | None = None
    ) -> PolicyActivation:
        """:meth:`propose` then :meth:`activate`.

        Raises:
            PolicyValidationError: The set does not validate.
        """
        v = self.propose(policy_set, author=author, comment=comment)
        return self.activate(v.version, actor=author, engine=engine)

    def load_active(self, engine: PolicyEngine) -> int:
        """Load the active stored version into ``engine``; returns its number.

        With no active version, or one that no longer validates, the engine
        is unloaded and denies everything (fail closed).
        """
        stored = self.repository.active_version()
        if stored is None:
            engine.unload("no policy version has been activated")
            return 0
        try:
            engine.load(stored.policy_set, version=stored.version)
        except PolicyValidationError as exc:
            engine.unload(f"active policy version {stored.version} does not validate: {exc}")
            self._audit.record("policy.load_failed", {"version": stored.version, "errors": exc.errors})
            return 0
        return stored.version

    def diff(self, old: int, new: int) -> PolicyDiff:
        """Policy-level diff between two stored versions.

        Raises:
            ConfigError: Either version does not exist.
        """
        a = self.repository.get_version(old).policy_set
        b = self.repository.get_version(new).policy_set
        return diff_policy_sets(a, b)

    def quarantine(self, posture: PostureStore, device_id: str, *, actor: str, reason: str) -> None:
        """Move a device into the quarantine segment (effective everywhere at once).

        Raises:
            UnknownDeviceError: The device has no posture.
        """
        p = posture.quarantine(device_id)
        self._audit.record(
            "policy.quarantine",
            {"device_id": device_id, "segment": p.segment, "actor": actor, "reason": reason},
        )

    def release(self, posture: PostureStore, device_id: str, *, actor: str, reason: str) -> None:
        """Return a device from quarantine to its home segment.

        Raises:
            UnknownDeviceError: The device has no posture.
        """
        p = posture.release(device_id)
        self._audit.record(
            "policy.release", {"device_id": device_id, "segment": p.segment, "actor": actor, "reason": reason}
        )
