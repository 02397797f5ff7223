"""Per-process event counters a service keeps for ``/metrics`` (bounded label tuples only)."""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["EventCounts"]


class EventCounts:
    """Thread-safe counts of events keyed by a tuple of bounded labels (never a device or subject id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, ...]] = Counter()

    def add(self, *labels: str) -> None:
        """Count one event with ``labels``."""
        with self._lock:
            self._counts[labels] += 1

    def snapshot(self) -> dict[tuple[str, ...], int]:
        """The counts so far."""
        with self._lock:
            return dict(self._counts)
