"""The agent's view of its own publishes at the broker: which the broker has taken (PUBACK), which not.

Two things follow from it (ADR 1506):

- a reading whose last publish still waits in the MQTT client is not
  published again when its end-to-end acknowledgement is due: a copy per
  resend interval would only lengthen the client's queue;
- a broker that has taken none of the publishes waiting for it for
  ``stall_s`` while the connection looks up means the connection is wedged
  (a half-open socket, or packets lost on the way, so the client's in-flight
  window stays full and every later publish only queues). The agent then
  drops the connection; the client reconnects with its usual backoff and
  sends everything it holds again (the agent does not add copies of it).
  A broker that is merely slow (overloaded) still takes some: that is
  progress, not a stall, and a reconnect would only add load (ADR 1507).

The MQTT client does not time out a publish on a live connection by itself
(paho-mqtt has no retry timer since 1.5), hence this watch.
"""

from __future__ import annotations

import threading
from typing import Protocol

__all__ = ["PublishWatch"]


class _Info(Protocol):
    def is_published(self) -> bool: ...


def _taken(info: _Info) -> bool:
    """The broker acknowledged it (PUBACK)."""
    try:
        return info.is_published()
    except (ValueError, RuntimeError):
        return False


def _settled(info: _Info) -> bool:
    """Taken by the broker, or never queued (the client refused it): nothing to wait for either way."""
    try:
        return info.is_published()
    except (ValueError, RuntimeError):
        return True


class PublishWatch:
    """Publishes not yet taken by the broker, oldest first (thread-safe).

    Args:
        stall_s: How long a publish may wait for the broker while connected.
    """

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._lock = threading.Lock()
        self._waiting: dict[tuple[int, int], tuple[float, _Info]] = {}
        self._connected_at = 0.0
        self._kept_over_stall: set[tuple[int, int]] = set()
        self._progress_at = 0.0  # when the broker was last seen to take a publish
        self._progressed = False  # it took one since the last stall check
        #: Connections dropped because the broker stopped taking publishes.
        self.stalls = 0

    def record(self, key: tuple[int, int], info: _Info, now: float) -> None:
        """A publish of ``key`` (epoch, sequence) was handed to the client at ``now``."""
        with self._lock:
            self._waiting.pop(key, None)  # re-inserted: the order stays oldest first
            self._waiting[key] = (now, info)
            # Forget the oldest the broker has taken (acknowledgements come mostly in order), so what is
            # held stays about the client's in-flight window however seldom the agent resends.
            while self._waiting:
                first = next(iter(self._waiting))
                info = self._waiting[first][1]
                if not _settled(info):
                    break
                if _taken(info):
                    self._progress_at = now
                del self._waiting[first]

    def connected(self, now: float) -> None:
        """A (re)connection: what waits has been sent again and gets ``stall_s`` from now."""
        with self._lock:
            self._connected_at = now

    def waiting(self, key: tuple[int, int]) -> bool:
        """Whether the last publish of ``key`` still waits for the broker."""
        with self._lock:
            entry = self._waiting.get(key)
            if entry is None:
                return False
            if _settled(entry[1]):
                self._progressed |= _taken(entry[1])
                del self._waiting[key]
                return False
            return True

    def stalled(self, now: float) -> bool:
        """Forget what the broker took; True if the oldest publish left has waited over ``stall_s``
        since it was handed over, since the last connection and since the broker last took any
        publish, whichever is latest (a slow broker that still takes publishes is not stalled).

        What waits is kept over the first stall: the client sends it again itself on its new connection,
        and a copy from the agent would only queue behind it. If the same publish is still the oldest at
        the next stall, the client is taken to have lost them all: they are forgotten, so the agent
        publishes them again (a stall never repeats itself for ever)."""
        with self._lock:
            for key, (_t, info) in list(self._waiting.items()):
                if _settled(info):
                    self._progressed |= _taken(info)
                    del self._waiting[key]
            if self._progressed:
                self._progress_at, self._progressed = now, False
            first = next(iter(self._waiting), None)
            if first is None:
                return False
            since = max(self._waiting[first][0], self._connected_at, self._progress_at)
            if now - since <= self.stall_s:
                return False
            if first in self._kept_over_stall:
                self._waiting.clear()
                self._kept_over_stall = set()
            else:
                self._kept_over_stall = set(self._waiting)
            self._connected_at = now  # the drop starts the next wait, whenever the client is back
            self.stalls += 1
            return True

    def clear(self) -> None:
        """A new client: the old one's publishes are no longer anyone's to wait for."""
        with self._lock:
            self._waiting.clear()
            self._kept_over_stall = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)
