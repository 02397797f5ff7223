"""How long the agent waits for the hub's end-to-end acknowledgement before it resends (ADR 1507).

The wait adapts to the acknowledgement times the agent measures, as TCP's
retransmission timer does (RFC 6298): a smoothed time and its variation, from
readings sent exactly once (Karn: a resent reading's acknowledgement may
answer either copy). While no such measurement comes (every reading is
resent before its acknowledgement arrives), each timeout doubles the wait for
all readings, as Karn's algorithm keeps TCP's backed-off timer until a valid
sample. The wait is never below ``agent.ack_timeout_s`` and at most
:data:`MAX_STRETCH` times it. A hub that takes 20 s to acknowledge
because it is working through a backlog is then not sent a copy of that
backlog every few seconds; each further resend of a reading doubles the wait
on top (the outbox's backoff).
"""

from __future__ import annotations

import threading

__all__ = ["MAX_STRETCH", "AckTimer"]

#: The adapted wait is at most this many times the configured acknowledgement timeout.
MAX_STRETCH = 8.0


class AckTimer:
    """The resend timeout, from measured acknowledgement times (thread-safe).

    Args:
        floor_s: The configured ``agent.ack_timeout_s``: the least wait, and the wait before any sample.
    """

    def __init__(self, floor_s: float) -> None:
        self.floor_s = floor_s
        self._lock = threading.Lock()
        self._smoothed: float | None = None
        self._variation = 0.0
        self._backoff = 1.0

    def sample(self, seconds: float) -> None:
        """One acknowledgement time (of a reading sent once); negative ones (clock steps) are ignored."""
        if seconds < 0:
            return
        with self._lock:
            self._backoff = 1.0
            if self._smoothed is None:
                self._smoothed, self._variation = seconds, seconds / 2
            else:
                self._variation = 0.75 * self._variation + 0.25 * abs(self._smoothed - seconds)
                self._smoothed = 0.875 * self._smoothed + 0.125 * seconds

    @property
    def longest_s(self) -> float:
        """The longest a reading ever waits between two sends (the outbox's backoff stops there)."""
        return MAX_STRETCH * self.floor_s

    def timed_out(self) -> None:
        """Readings were resent for want of an acknowledgement: wait twice as long until a measurement."""
        with self._lock:
            self._backoff = min(2 * self._backoff, MAX_STRETCH)

    @property
    def timeout_s(self) -> float:
        with self._lock:
            wait = self.floor_s if self._smoothed is None else self._smoothed + 4 * self._variation
            return min(max(wait, self.floor_s) * self._backoff, MAX_STRETCH * self.floor_s)
