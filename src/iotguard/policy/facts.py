"""The facts the engine gives Cedar: entities and context built from posture.

Python only supplies facts; every rule lives in the Cedar policies. A device
request is evaluated with the device's ``Device`` entity, its (effective)
``Segment``, the ``Topic`` entity the layout derives from the topic string,
and a context record built from posture at the decision time.

:class:`DeviceFacts` keeps those facts for one device at one posture, so a
device's requests reuse them: the context is rebuilt only when a
time-derived value in it changes, and the Cedar entity handle is parsed only
when a decision actually needs Cedar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import cedarpy

from iotguard.policy.posture import Posture, SegmentSpec
from iotguard.policy.topics import TopicInfo, TopicLayout

__all__ = [
    "ATTESTATION_AGE_STEP_S",
    "NO_ATTESTATION_AGE_S",
    "DeviceFacts",
    "TopicShape",
    "action_uid",
    "attestation_age",
    "attestation_fresh",
    "device_context",
    "device_entity",
    "entity_ref",
    "operator_target",
    "role_entities",
    "segment_entity",
    "topic_entity",
    "topic_shape",
    "uid",
]

HOUR: Final = 3600.0
DAY: Final = 86400.0
#: ``attestation_age_s`` is the age rounded *up* to a multiple of this: a
#: threshold that is a multiple of it (``> 300``, ``> 900``) compares exactly,
#: and the context (and cached decisions) change once per step, not per second.
ATTESTATION_AGE_STEP_S: Final = 60
#: ``attestation_age_s`` of a device with no verified attestation (about 68 years).
NO_ATTESTATION_AGE_S: Final = 2**31 - 1

#: What a decision may depend on about a topic: its Cedar attributes as JSON,
#: with the owning device reduced to ``"self"`` (the principal) or ``"other"``.
TopicShape = str


def uid(kind: str, ident: str) -> dict[str, str]:
    """A Cedar entity uid in JSON form."""
    return {"type": kind, "id": ident}


def entity_ref(kind: str, ident: str) -> dict[str, dict[str, str]]:
    """A Cedar entity reference as an attribute value."""
    return {"__entity": {"type": kind, "id": ident}}


def action_uid(name: str) -> dict[str, str]:
    """The uid of Cedar action ``name``."""
    return {"type": "Action", "id": name}


def segment_entity(name: str, spec: SegmentSpec) -> dict[str, Any]:
    """The ``Segment`` entity of ``name`` with ``spec``'s attributes."""
    return {"uid": uid("Segment", name), "attrs": spec.cedar_attrs(), "parents": []}


def device_entity(device_id: str, segment: str, model: str) -> dict[str, Any]:
    """The ``Device`` entity, a member of (and pointing at) ``segment``."""
    return {
        "uid": uid("Device", device_id),
        "attrs": {"segment": entity_ref("Segment", segment), "model": model},
        "parents": [uid("Segment", segment)],
    }


def topic_entity(info: TopicInfo) -> dict[str, Any]:
    """The ``Topic`` entity of a classified topic."""
    attrs: dict[str, Any] = {"kind": info.kind, "direction": info.direction}
    if info.segment is not None:
        attrs["segment"] = entity_ref("Segment", info.segment)
    if info.device is not None:
        attrs["device"] = entity_ref("Device", info.device)
    return {"uid": uid("Topic", info.topic), "attrs": attrs, "parents": []}


def topic_shape(info: TopicInfo, principal: str) -> TopicShape | None:
    """The topic entity's attributes with the owner replaced by its relation to ``principal``.

    ``None`` for a topic the layout does not recognise: its id may be
    anything, so its decisions are never shared.
    """
    if info.kind == "unknown":
        return None
    attrs = topic_entity(info)["attrs"]
    if info.device is not None:
        attrs["device"] = "self" if info.device == principal else "other"
    return json.dumps(attrs, sort_keys=True)


def role_entities(roles: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """``Role`` entities of the operator role hierarchy."""
    return [
        {"uid": uid("Role", role), "attrs": {}, "parents": [uid("Role", p) for p in parents]}
        for role, parents in sorted(roles.items())
    ]


def attestation_fresh(posture: Posture, ts: float, freshness_s: float) -> tuple[bool, float]:
    """Whether a verified attestation is fresh at ``ts``, and until when that holds."""
    if posture.trust_tier != "verified" or posture.attested_at is None:
        return False, float("inf")
    at = posture.attested_at.timestamp()
    end = at + freshness_s
    if at <= ts < end:
        return True, end
    return False, (at if ts < at else float("inf"))


@dataclass(frozen=True)
class OperatorTarget:
    """What an operator request's resource adds: its entities, the ``target_*`` context, and
    until when that context holds (an attestation that goes stale changes it)."""

    entities: list[dict[str, Any]]
    context: dict[str, Any]
    valid_until: float = float("inf")


def operator_target(kind: str, rid: str, posture: Posture | None, segment_spec: Callable[[str], SegmentSpec],
                    datasets: Mapping[str, bool], ts: float, freshness_s: float) -> OperatorTarget:
    """The resource side of an operator request: a device (with its segment and, when its posture
    is known, its trust tier, risk and attestation freshness), a segment, a dataset, or another entity."""
    context: dict[str, Any] = {"target_trust_tier": "none", "target_risk_score": 0,
                               "target_fresh_attestation": False}
    if kind == "Device":
        segment = posture.effective_segment if posture else "unassigned"
        entities = [device_entity(rid, segment, posture.model if posture else ""),
                    segment_entity(segment, segment_spec(segment))]
        if posture is None:
            return OperatorTarget(entities, context)
        fresh, fresh_until = attestation_fresh(posture, ts, freshness_s)
        context.update(target_trust_tier=posture.trust_tier, target_risk_score=posture.risk_score,
                       target_fresh_attestation=fresh)
        return OperatorTarget(entities, context, fresh_until)
    if kind == "Segment":
        return OperatorTarget([segment_entity(rid, segment_spec(rid))], context)
    attrs = {"anonymised": datasets.get(rid, False)} if kind == "Dataset" else {}
    return OperatorTarget([{"uid": uid(kind, rid), "attrs": attrs, "parents": []}], context)


def attestation_age(posture: Posture, ts: float) -> tuple[int, float]:
    """Seconds since the last verified attestation at ``ts``, rounded up to a step, and until when that holds.

    A device never verified (or whose attestation time lies in the future
    beyond the clock) reports :data:`NO_ATTESTATION_AGE_S` and ``0``.
    """
    if posture.attested_at is None:
        return NO_ATTESTATION_AGE_S, float("inf")
    at = posture.attested_at.timestamp()
    if ts < at:
        return 0, at
    steps = math.ceil((ts - at) / ATTESTATION_AGE_STEP_S)
    age = min(steps * ATTESTATION_AGE_STEP_S, NO_ATTESTATION_AGE_S)
    return age, at + age


def device_context(posture: Posture, now: datetime, freshness_s: float) -> tuple[dict[str, Any], float]:
    """The context record of a device request at ``now``, and until when it holds."""
    ts = now.timestamp()
    valid_until = ts - ts % HOUR + HOUR
    cert_valid = False
    days_left = 0
    if posture.cert_not_after is not None:
        remaining = posture.cert_not_after.timestamp() - ts
        if remaining > 0:
            cert_valid = True
            days_left = math.ceil(remaining / DAY)
            # days_left drops by one when the remaining time reaches (days_left - 1) days.
            valid_until = min(valid_until, ts + remaining - (days_left - 1) * DAY)
    fresh, fresh_until = attestation_fresh(posture, ts, freshness_s)
    age, age_until = attestation_age(posture, ts)
    context = {
        "trust_tier": posture.trust_tier,
        "risk_score": posture.risk_score,
        "cert_valid": cert_valid,
        "cert_days_left": days_left,
        "fresh_attestation": fresh,
        "attestation_age_s": age,
        "hour_utc": now.astimezone(UTC).hour,
        "declared_location": posture.declared_location,
    }
    return context, min(valid_until, fresh_until, age_until)


@dataclass
class DeviceFacts:
    """The Cedar facts of one device at one posture, reused across its requests.

    Attributes:
        posture: The posture the facts were built from (identity-compared:
            a new posture object means new facts).
        entities: Device, segment and the own topics used so far.
        own_topics: Every topic the layout gives the device.
        class_key: The Cedar attributes and parents of the device and of its
            segment as JSON (a decision-class key part: whatever attribute
            the entities gain is in the key too).
        shapes: Topic shapes of the own topics seen so far.
        context: Context record valid in ``[valid_from, valid_until)``.
        context_json: ``context`` serialised.
        context_key: The part of ``context`` that goes into a decision-class
            key (set by the engine, reset when the context is rebuilt).
    """

    posture: Posture
    entities: list[dict[str, Any]]
    own_topics: frozenset[str]
    class_key: str
    shapes: dict[str, TopicShape | None] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    context_json: str = ""
    context_key: Hashable | None = None
    valid_from: float = 0.0
    valid_until: float = 0.0
    _handle: cedarpy.Entities | None = None
    _loaded: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, posture: Posture, segment: SegmentSpec, layout: TopicLayout) -> DeviceFacts:
        """Facts of ``posture``'s device; ``segment`` is its effective segment's spec."""
        name = posture.effective_segment
        entities = [
            device_entity(posture.device_id, name, posture.model),
            segment_entity(name, segment),
        ]
        own = frozenset(layout.device_topics(posture.segment, posture.device_id))
        device, zone = entities
        class_key = json.dumps([device["attrs"], device["parents"], zone], sort_keys=True)
        return cls(posture, entities, own, class_key)

    def refresh_context(self, now: datetime, ts: float, freshness_s: float) -> None:
        """Rebuild the context unless the one held is valid at ``ts``."""
        if not self.valid_from <= ts < self.valid_until:
            context, until = device_context(self.posture, now, freshness_s)
            self.context, self.context_json = context, json.dumps(context)
            self.context_key = None
            self.valid_from, self.valid_until = ts, until

    def shape(self, topic: str, layout: TopicLayout) -> TopicShape | None:
        """The shape of ``topic`` (remembered for own topics, whose shape never changes)."""
        if topic in self.shapes:
            return self.shapes[topic]
        shape = topic_shape(layout.parse(topic), self.posture.device_id)
        if topic in self.own_topics:
            self.shapes[topic] = shape
        return shape

    def entities_with(self, extra: list[dict[str, Any]]) -> tuple[cedarpy.Entities, list[dict[str, Any]]]:
        """The device's entity handle (and list) plus ``extra`` entities for one request only.

        Raises:
            ValueError: Cedar refuses the entities (an id it cannot parse).
        """
        if self._handle is None:
            self._handle = cedarpy.Entities.from_json_str(json.dumps(self.entities))
        if not extra:
            return self._handle, self.entities
        return self._handle.with_added_json_str(json.dumps(extra)), [*self.entities, *extra]

    def entities_for(self, info: TopicInfo) -> tuple[cedarpy.Entities, list[dict[str, Any]]]:
        """The Cedar entity handle (and list) for a request on ``info.topic``.

        Own topics join the device's handle on first use; any other topic
        (a lateral attempt) is added for this request only.

        Raises:
            ValueError: Cedar refuses the entities (an id it cannot parse).
        """
        if self._handle is None:
            self._handle = cedarpy.Entities.from_json_str(json.dumps(self.entities))
        topic = info.topic
        if topic in self._loaded:
            return self._handle, self.entities
        extra = topic_entity(info)
        added = self._handle.with_added_json_str(json.dumps([extra]))
        if topic in self.own_topics:
            self._handle, self.entities = added, [*self.entities, extra]
            self._loaded.add(topic)
            return added, self.entities
        return added, [*self.entities, extra]
