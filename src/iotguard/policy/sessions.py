"""Continuous authentication: open sessions re-evaluated on every change.

The hub registers each long-lived authorization it granted (an MQTT
subscription, a device connection's publish right, an operator's streaming
API session). After a posture, policy, role or segment change the engine
notifies its listeners; :meth:`SessionRegistry.reevaluate` then decides every
affected session again and returns the ones that became denied, for the hub
to close.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from iotguard.policy.engine import PolicyEngine
from iotguard.policy.model import AccessRequest, Decision

__all__ = ["RevokedSession", "SessionRegistry"]


@dataclass(frozen=True, slots=True)
class RevokedSession:
    """A session whose request is no longer allowed.

    Attributes:
        session_id: The id the hub registered it under.
        request: The request the session was granted for.
        decision: The new, denying decision.
    """

    session_id: str
    request: AccessRequest
    decision: Decision


class SessionRegistry:
    """Open sessions, indexed by the device whose posture they depend on.

    Args:
        engine: The engine that granted the sessions. The registry listens to
            its changes and remembers which sessions are due for
            re-evaluation; call :meth:`reevaluate` to decide them.
    """

    def __init__(self, engine: PolicyEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._sessions: dict[str, AccessRequest] = {}
        self._by_device: dict[str, set[str]] = {}
        self._dirty: set[str] = set()
        self._all_dirty = False
        engine.add_change_listener(self._on_change)

    def __len__(self) -> int:
        return len(self._sessions)

    @staticmethod
    def _device_of(request: AccessRequest) -> str | None:
        if request.principal_type == "Device":
            return request.principal_id
        if request.resource_type == "Device":
            return request.resource_id
        return None

    def open(self, session_id: str, request: AccessRequest, *, now: datetime | None = None) -> Decision:
        """Authorize ``request`` and, if allowed, register it as an open session.

        Raises:
            PolicyDenied: The request is denied; nothing is registered.
        """
        decision = self._engine.authorize(request, now=now)
        with self._lock:
            self._sessions[session_id] = request
            device = self._device_of(request)
            if device is not None:
                self._by_device.setdefault(device, set()).add(session_id)
        return decision

    def close(self, session_id: str) -> None:
        """Forget a session (client disconnected or unsubscribed)."""
        with self._lock:
            request = self._sessions.pop(session_id, None)
            device = self._device_of(request) if request is not None else None
            if device is not None:
                ids = self._by_device.get(device)
                if ids is not None:
                    ids.discard(session_id)
                    if not ids:
                        del self._by_device[device]

    def _on_change(self, device_id: str | None) -> None:
        with self._lock:
            if device_id is None:
                self._all_dirty = True
            else:
                self._dirty.add(device_id)

    def reevaluate(self, *, now: datetime | None = None) -> list[RevokedSession]:
        """Decide again every session affected by a change since the last call.

        Sessions that are now denied are removed and returned; the hub must
        terminate them (disconnect the client, drop the subscription).
        """
        with self._lock:
            if self._all_dirty:
                due = list(self._sessions)
            else:
                due = [sid for dev in self._dirty for sid in self._by_device.get(dev, ())]
            self._dirty.clear()
            self._all_dirty = False
            requests = [(sid, self._sessions[sid]) for sid in due if sid in self._sessions]
        revoked: list[RevokedSession] = []
        for sid, request in requests:
            decision = self._engine.decide(request, now=now)
            if not decision.allowed:
                revoked.append(RevokedSession(sid, request, decision))
        for item in revoked:
            self.close(item.session_id)
        return revoked
