"""The engine's decision cache: per request, and per decision class.

Per request. A decision is kept under its request (principal, action,
resource, role) with the interval in which the facts it was computed from
hold: until the earliest of a posture change of the device it depends on,
any policy, role or segment change, and the next instant at which a
time-derived context value changes. Invalidation is synchronous; a decision
computed while an invalidation happened is not stored.

Per decision class. Most devices of a fleet look alike to the policies: the
same model in the same segment, publishing to their own telemetry topic,
with the same trust tier, risk score, hour and certificate days left. For a
device request the class is everything Cedar can observe of the request:
the action, the attributes and parents of the device and of its effective
segment, the topic's attributes with its owner reduced to the principal or
another device, and the context attributes the policies read. Cedar
compares entities only by identity and never exposes an entity id as a
value, so renaming the principal, the topic and the topic's
owner consistently cannot change a decision unless a policy names one of
them literally. Classes are therefore shared only while no policy holds an
entity literal outside :data:`CLASS_SAFE_LITERAL_TYPES` (checked on the
parsed policies at load; any ``Device`` or ``Topic`` literal disables
sharing), only for topics the layout recognises (their ids are made of
checked identifiers, so Cedar accepts every one alike), and never for a
decision that carries an evaluation error. Context attributes no policy
reads (``cert_days_left`` in the default set) are left out of the key: a
policy sees the context only through ``context.attr`` and ``context has
attr``; if any policy uses ``context`` in another way, the whole context is
part of the key. A class decision needs no expiry of its own: the facts
that change over time are part of the key.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, Final

from iotguard.policy.facts import TopicShape
from iotguard.policy.model import AccessRequest, Decision

__all__ = [
    "CLASS_SAFE_LITERAL_TYPES",
    "DecisionCache",
    "DecisionClass",
    "classes_shareable",
    "context_attributes",
    "literal_types",
]

#: Entity types a policy may name literally without disabling decision
#: classes: none of them is renamed between requests of one class.
CLASS_SAFE_LITERAL_TYPES: Final = frozenset({"Action", "Segment", "Role", "Operator", "Dataset", "Firmware", "Hub"})

#: ``(epoch, action, device and segment attributes, topic shape, context
#: key)``; the epoch keeps a key computed under a replaced policy set from
#: matching.
DecisionClass = tuple[int, str, str, TopicShape, Hashable]

_CONTEXT: Final = {"Var": "context"}


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        kind, ident = node.get("type"), node.get("id")
        if isinstance(kind, str) and isinstance(ident, str):
            yield kind
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def literal_types(policies: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """Entity types named literally anywhere in parsed (Cedar JSON) policies.

    Over-approximates: every ``{"type": ..., "id": ...}`` object counts, in
    scopes, conditions and annotations alike.
    """
    return frozenset(_walk(list(policies.values())))


def _reads_context_whole(node: Any, found: set[str]) -> bool:
    """Collect ``context.attr`` / ``context has attr`` names; True if ``context`` is used otherwise."""
    if isinstance(node, Mapping):
        for op in (".", "has"):
            inner = node.get(op)
            if isinstance(inner, Mapping) and inner.get("left") == _CONTEXT and isinstance(inner.get("attr"), str):
                found.add(inner["attr"])
                return any(_reads_context_whole(v, found) for k, v in node.items() if k != op)
        if node.get("Var") == "context":
            return True
        return any(_reads_context_whole(v, found) for v in node.values())
    if isinstance(node, list):
        return any(_reads_context_whole(v, found) for v in node)
    return False


def context_attributes(policies: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...] | None:
    """The context attributes parsed (Cedar JSON) policies read, sorted; ``None`` if they may read all."""
    found: set[str] = set()
    if _reads_context_whole(list(policies.values()), found):
        return None
    return tuple(sorted(found))


def classes_shareable(policies: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether decisions may be shared between requests of one decision class."""
    return literal_types(policies) <= CLASS_SAFE_LITERAL_TYPES


class DecisionCache:
    """Decisions by request and by decision class, with invalidation.

    Args:
        max_entries: Bound of each map; a full map is cleared (decisions
            are recomputed, never guessed).

    Attributes:
        entries: Request -> ``(decision, valid from, valid until)`` as POSIX
            timestamps. Read directly by the engine's fast path.
        generation: Incremented by every invalidation.
        epoch: Incremented when everything is invalidated (policy, roles,
            segments, datasets).
        evaluations: Decisions computed by Cedar (counted by the engine).
        class_hits: Decisions taken from a decision class.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self.entries: dict[AccessRequest, tuple[Decision, float, float]] = {}
        self._index: dict[str, list[AccessRequest]] = {}
        self._classes: dict[DecisionClass, Decision] = {}
        self.generation = 0
        self.epoch = 0
        self.evaluations = 0
        self.class_hits = 0

    def __len__(self) -> int:
        return len(self.entries)

    def put(
        self,
        request: AccessRequest,
        decision: Decision,
        valid_from: float,
        valid_until: float,
        depends_on: str | None,
        generation: int,
    ) -> None:
        """Keep ``decision`` unless an invalidation happened since ``generation``."""
        with self._lock:
            if generation != self.generation:
                return
            if len(self.entries) >= self._max:
                self.entries.clear()
                self._index.clear()
            self.entries[request] = (decision, valid_from, valid_until)
            if depends_on is not None:
                self._index.setdefault(depends_on, []).append(request)

    def shared(self, key: DecisionClass) -> Decision | None:
        """The decision of class ``key``, if one is known."""
        decision = self._classes.get(key)
        if decision is not None:
            self.class_hits += 1
        return decision

    def put_shared(self, key: DecisionClass, decision: Decision, epoch: int) -> None:
        """Keep ``decision`` for class ``key`` unless everything was invalidated since ``epoch``."""
        if decision.errors:
            return
        with self._lock:
            if epoch != self.epoch:
                return
            if len(self._classes) >= self._max:
                self._classes.clear()
            self._classes[key] = decision

    def invalidate_device(self, device_id: str) -> None:
        """Drop the decisions that depend on ``device_id``'s posture."""
        with self._lock:
            self.generation += 1
            for key in self._index.pop(device_id, ()):
                self.entries.pop(key, None)

    def invalidate_all(self) -> None:
        """Drop every decision (policy, roles, segments or datasets changed)."""
        with self._lock:
            self.generation += 1
            self.epoch += 1
            self.entries.clear()
            self._index.clear()
            self._classes.clear()

    def stats(self) -> dict[str, int]:
        """Counters for metrics and benchmarks."""
        return {
            "entries": len(self.entries),
            "classes": len(self._classes),
            "evaluations": self.evaluations,
            "class_hits": self.class_hits,
        }
