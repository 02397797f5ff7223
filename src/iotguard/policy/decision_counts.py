"""Counts of the engine's decisions by principal type, action and outcome (for the hub's ``/metrics``).

Each thread counts into its own dict without a lock (the decision path is hot: a cached decision takes about
a microsecond); :meth:`DecisionCounts.snapshot` sums the threads' dicts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from iotguard.policy.model import DEVICE_ACTIONS, DEVICE_SELF_ACTIONS, OPERATOR_ACTIONS, AccessRequest, Decision

__all__ = ["DecisionCounts"]

#: Every action the engine knows; any other name is counted as ``other`` (a bounded label set).
_KNOWN_ACTIONS = frozenset(DEVICE_ACTIONS) | frozenset(DEVICE_SELF_ACTIONS) | frozenset(OPERATOR_ACTIONS)

_Key = tuple[str, str, bool]


class DecisionCounts:
    """Counts: (principal type, action, ``allow``/``deny``) -> decisions; safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._per_thread: list[dict[_Key, int]] = []

    def _counts(self) -> dict[_Key, int]:
        counts: dict[_Key, int] | None = getattr(self._local, "counts", None)
        if counts is None:
            counts = self._local.counts = {}
            with self._lock:
                self._per_thread.append(counts)
        return counts

    def add(self, request: AccessRequest, decision: Decision) -> None:
        """Count one decision of ``request``."""
        counts = self._counts()
        key = (request.principal_type, request.action if request.action in _KNOWN_ACTIONS else "other",
               decision.allowed)
        counts[key] = counts.get(key, 0) + 1

    def add_many(self, pairs: Iterable[tuple[AccessRequest, Decision]]) -> None:
        """Count decisions of their requests (a batch)."""
        counts = self._counts()
        for request, decision in pairs:
            key = (request.principal_type, request.action if request.action in _KNOWN_ACTIONS else "other",
                   decision.allowed)
            counts[key] = counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        """The counts so far: (``device``/``operator``, action, ``allow``/``deny``) -> decisions."""
        with self._lock:
            threads = list(self._per_thread)
        total: dict[tuple[str, str, str], int] = {}
        for counts in threads:
            for (principal, action, allowed), n in dict(counts).items():  # dict() copies under the GIL
                key = ("device" if principal == "Device" else "operator", action, "allow" if allowed else "deny")
                total[key] = total.get(key, 0) + n
        return total
