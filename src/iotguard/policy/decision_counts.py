"""Counts of the engine's decisions by principal type, action and outcome (for the hub's ``/metrics``)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from iotguard.policy.model import DEVICE_ACTIONS, DEVICE_SELF_ACTIONS, OPERATOR_ACTIONS, AccessRequest, Decision

__all__ = ["DecisionCounts"]

#: Every action the engine knows; any other name is counted as ``other`` (a bounded label set).
_KNOWN_ACTIONS = frozenset(DEVICE_ACTIONS) | frozenset(DEVICE_SELF_ACTIONS) | frozenset(OPERATOR_ACTIONS)


class DecisionCounts:
    """Thread-safe counts: (principal type, action, ``allow``/``deny``) -> decisions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}

    def add(self, pairs: Iterable[tuple[AccessRequest, Decision]]) -> None:
        """Count decisions of their requests."""
        with self._lock:
            counts = self._counts
            for request, decision in pairs:
                action = request.action if request.action in _KNOWN_ACTIONS else "other"
                principal = "device" if request.principal_type == "Device" else "operator"
                key = (principal, action, "allow" if decision.allowed else "deny")
                counts[key] = counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        """The counts so far."""
        with self._lock:
            return dict(self._counts)
