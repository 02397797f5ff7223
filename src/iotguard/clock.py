"""Injectable clocks. Time is always timezone-aware UTC."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from iotguard.errors import MalformedError

__all__ = ["MAX_WIRE_TIMESTAMP", "Clock", "FixedClock", "OffsetFileClock", "SystemClock", "utc", "utc_from_wire"]


def utc(ts: float) -> datetime:
    """Convert a POSIX timestamp to an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=UTC)


#: Largest POSIX timestamp a message may carry: 9999-12-31T23:59:59Z, the last
#: second a ``datetime`` can hold. Larger values would overflow on conversion.
MAX_WIRE_TIMESTAMP = 253_402_300_799


def utc_from_wire(value: object, what: str) -> datetime:
    """Convert an untrusted integer timestamp (seconds) to an aware UTC datetime.

    Raises:
        MalformedError: not an integer in ``0..MAX_WIRE_TIMESTAMP``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WIRE_TIMESTAMP:
        raise MalformedError(f"{what} must be a timestamp between 1970 and 9999")
    return datetime.fromtimestamp(value, tz=UTC)


class Clock(Protocol):
    """A source of the current time."""

    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(tz=UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FixedClock:
    """A clock for tests: stands still until advanced."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._mono = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("clocks do not go backwards")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds


class OffsetFileClock:
    """The real clock moved by the number of seconds written in a file, for fault injection on a
    real process (``hub.unsafe_clock_offset_file``, ``agent.unsafe_clock_offset_file``): writing
    ``-7200`` makes the wall clock jump back two hours, as a badly set system clock would.

    Only the wall clock jumps; :meth:`monotonic` stays the real monotonic clock, as a jump of the
    system clock leaves ``CLOCK_MONOTONIC`` alone. Libraries that read the system clock
    themselves (OpenSSL's certificate checks) do not see the offset. The file is read again at
    most every 0.1 s; a missing, empty or unparsable file means an offset of 0.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0.0
        self._read_at = -1.0
        self._lock = threading.Lock()

    def offset(self) -> float:
        with self._lock:
            mono = time.monotonic()
            if self._read_at < 0 or mono - self._read_at >= 0.1:
                self._read_at = mono
                try:
                    self._offset = float(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    self._offset = 0.0
            return self._offset

    def now(self) -> datetime:
        return datetime.now(tz=UTC) + timedelta(seconds=self.offset())

    def monotonic(self) -> float:
        return time.monotonic()
