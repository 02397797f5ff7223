"""Aggregation rounds in memory, for unit tests and a single-process hub (passes the SQL store's contract)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from iotguard.errors import MalformedError
from iotguard.hub.stores.aggregation_rounds import (
    FINISHED,
    MAX_SPEC_BYTES,
    RoundEvent,
    StoredRound,
    check_event,
)

__all__ = ["MemoryRoundStore"]


class _Tx:
    def __init__(self, rnd: StoredRound, version: int, log: list[RoundEvent]) -> None:
        self.round, self.version, self._log = rnd, version, log
        self.added: list[RoundEvent] = []
        self.phase: str | None = None

    def events_after(self, seq: int) -> list[RoundEvent]:
        # seq n is the log's n-th entry
        seq = max(0, seq)
        return self._log[seq:] + self.added[max(0, seq - len(self._log)):]

    def append(self, kind: str, device_id: str, message: bytes, at: datetime, phase: str) -> None:
        check_event(kind, device_id, message)
        self.version += 1
        self.added.append(RoundEvent(self.version, kind, device_id, bytes(message), at))
        self.phase = phase


class MemoryRoundStore:
    """:class:`~iotguard.hub.stores.aggregation_rounds.RoundStore` in memory.

    A step holds the store's lock until it ends (what the SQL store's row lock gives); its appends apply only
    when the step's block ends without an error.
    """

    def __init__(self) -> None:
        self._rounds: dict[str, StoredRound] = {}
        self._phase: dict[str, str] = {}
        self._log: dict[str, list[RoundEvent]] = {}
        self._lock = threading.RLock()

    def create(self, rnd: StoredRound, phase: str, *, max_running: int, keep_finished: int) -> None:
        if len(rnd.spec) > MAX_SPEC_BYTES:
            raise MalformedError("round spec too large")
        with self._lock:
            if sum(p not in FINISHED for p in self._phase.values()) >= max_running:
                raise MalformedError("too many aggregation rounds running")
            newest_first = sorted((r for r in self._rounds.values() if self._phase[r.round_id] in FINISHED),
                                  key=lambda r: r.started_at, reverse=True)
            for r in newest_first[max(0, keep_finished - 1):]:
                del self._rounds[r.round_id], self._phase[r.round_id], self._log[r.round_id]
            self._rounds[rnd.round_id] = rnd
            self._phase[rnd.round_id] = phase
            self._log[rnd.round_id] = []

    def get(self, round_id: str) -> StoredRound | None:
        with self._lock:
            return self._rounds.get(round_id)

    @contextmanager
    def step(self, round_id: str) -> Iterator[_Tx | None]:
        with self._lock:
            rnd = self._rounds.get(round_id)
            if rnd is None:
                yield None
                return
            log = self._log[round_id]
            tx = _Tx(rnd, len(log), log)
            yield tx
            log.extend(tx.added)
            if tx.phase is not None:
                self._phase[round_id] = tx.phase

    def phases(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for p in self._phase.values():
                out[p] = out.get(p, 0) + 1
            return out
