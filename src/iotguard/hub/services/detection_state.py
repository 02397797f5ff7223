"""Applying an input to detector state shared by every hub process: load, apply, compare-and-set, retry.

One loop for every detector the hub runs (health baselines, hub-signal
rules, the flow monitor's per-host state; ADR 0751, ADR 0752): load the rows
the input touches from the :class:`DetectorStateStore`, let the detector
apply the input to exactly that state, and write every row back at the
version it was loaded at, in one transaction. If another hub process wrote
one of the rows meanwhile nothing is written, and the input is applied again
to the state as it is now (at most :data:`STATE_ATTEMPTS` times). Only the
result of the attempt that was stored is returned, so an input never alerts
twice and never counts twice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TypeVar

from iotguard.clock import Clock
from iotguard.hub.stores.detector_state import DetectorStateStore, StateConflict, StateWrite, VersionedState

__all__ = ["STATE_ATTEMPTS", "apply_shared"]

#: Loads and writes an input is given before it fails because other processes keep writing the same rows.
STATE_ATTEMPTS = 16

T = TypeVar("T")
#: Given the stored rows (device id -> state; absent: never written), the new bodies (device id -> body;
#: rows left out are not written) and the result of applying the input.
Apply = Callable[[Mapping[str, VersionedState]], tuple[Mapping[str, bytes], T]]


def apply_shared(states: DetectorStateStore, kind: str, device_ids: Collection[str], clock: Clock, apply: Apply[T],
                 *, on_conflict: Callable[[], None] | None = None) -> T:
    """Apply an input to the ``kind`` rows of ``device_ids`` and store the result with compare-and-set.

    ``apply`` must be a pure function of the rows it is given (it runs again
    after a lost write); ``on_conflict`` is called after each lost write.

    Raises:
        StateConflict: ``detector_state_conflict`` after :data:`STATE_ATTEMPTS` lost writes in a row.
        StorageError: a body over the store's limit.
    """
    for _ in range(STATE_ATTEMPTS):
        stored = states.load_many(kind, device_ids)
        bodies, result = apply(stored)
        writes = [StateWrite(d, body, stored[d].version if d in stored else None) for d, body in bodies.items()]
        if writes:
            try:
                states.save_many(kind, writes, clock.now())
            except StateConflict:
                if on_conflict is not None:
                    on_conflict()
                continue
        return result
    raise StateConflict(f"{kind} state of {len(device_ids)} device(s) kept changing; input not applied")
