"""The policy decision point: Cedar policies, posture context, decision cache.

The engine turns an :class:`~iotguard.policy.model.AccessRequest` into a
Cedar request, with entities built from the posture store, the segment
attributes and the topic layout, and a context built from posture at the
decision time. Risk rules live in the Cedar policies; Python only supplies
facts.

Caching. A decision is cached under its request (principal, action,
resource, role) until the earliest of: a posture change of the principal
device (or of the device an operator request targets), any policy, role or
segment change, and the next instant at which a time-derived context value
changes (hour boundary, certificate expiry or day boundary of its remaining
days, end of attestation freshness). Posture and policy changes invalidate
synchronously, before the call that made them returns; a decision that was
being evaluated while an invalidation happened is not cached.

Fail closed. An engine constructed with a policy set that does not load
denies every request with ``engine_not_loaded``; any Cedar evaluation error
denies with ``evaluation_error`` even where Cedar would have skipped a
failing forbid.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import cedarpy

from iotguard.clock import Clock, SystemClock
from iotguard.errors import PolicyDenied
from iotguard.policy.model import (
    DEVICE_ACTIONS,
    DEVICE_SELF_ACTIONS,
    OPERATOR_ACTIONS,
    QUARANTINE_SEGMENT,
    AccessRequest,
    Decision,
    DecisionCode,
    Explanation,
)
from iotguard.policy.policyset import (
    PolicySchema,
    PolicySet,
    PolicyValidationError,
    default_roles,
    default_schema,
    validate,
)
from iotguard.policy.posture import Posture, PostureStore, SegmentSpec
from iotguard.policy.topics import TopicInfo, TopicLayout

__all__ = ["ChangeListener", "EngineLimits", "PolicyEngine"]

_log = logging.getLogger(__name__)

#: Called after decisions may have changed: with a device id, or ``None``
#: when everything may have changed (policy, roles or segments).
ChangeListener = Callable[[str | None], None]

_HOUR: Final = 3600.0
_DAY: Final = 86400.0
_NO_TARGET: Final = {"target_trust_tier": "none", "target_risk_score": 0, "target_fresh_attestation": False}


@dataclass(frozen=True)
class EngineLimits:
    """Named, bounded engine settings.

    Attributes:
        attestation_freshness_s: How long a verified attestation counts as
            fresh for step-up rules.
        max_cache_entries: Decision-cache size; when full it is cleared
            (decisions are recomputed, never guessed).
        max_batch: Largest batch :meth:`PolicyEngine.decide_batch` accepts.
    """

    attestation_freshness_s: float = 300.0
    max_cache_entries: int = 500_000
    max_batch: int = 10_000

    def __post_init__(self) -> None:
        if not 0 < self.attestation_freshness_s <= 86400:
            raise ValueError("attestation_freshness_s must lie in (0, 86400]")
        if not 0 < self.max_cache_entries <= 10_000_000:
            raise ValueError("max_cache_entries must lie in (0, 10_000_000]")
        if not 0 < self.max_batch <= 1_000_000:
            raise ValueError("max_batch must lie in (0, 1_000_000]")


@dataclass(frozen=True)
class _Loaded:
    policy_set: PolicySet
    version: int
    handle: cedarpy.PolicySet
    permits: cedarpy.PolicySet | None
    forbids: cedarpy.PolicySet | None


@dataclass
class _DeviceState:
    """Entities prebuilt for one device at one posture (reused across requests)."""

    posture: Posture
    entities: list[dict[str, Any]]
    handle: cedarpy.Entities
    own_topics: frozenset[str]
    loaded_topics: set[str]
    context_json: str = ""
    context: dict[str, Any] | None = None
    context_valid_from: float = 0.0
    context_valid_until: float = 0.0


@dataclass
class _Prepared:
    request: dict[str, Any]
    entities: cedarpy.Entities
    entity_list: list[dict[str, Any]]
    context: dict[str, Any]
    valid_from: float
    valid_until: float
    depends_on: str | None


def _uid(kind: str, ident: str) -> dict[str, str]:
    return {"type": kind, "id": ident}


def _ref(kind: str, ident: str) -> dict[str, dict[str, str]]:
    return {"__entity": {"type": kind, "id": ident}}


def _action(name: str) -> dict[str, str]:
    return {"type": "Action", "id": name}


class PolicyEngine:
    """Decides iotguard requests with Cedar.

    Args:
        policy_set: Policies to load; ``None`` or a set that fails to load
            leaves the engine denying everything (see :attr:`load_error`).
        schema: Schema to validate against (default: the shipped schema).
        posture: Posture store (default: a new, empty one).
        segments: Segment attributes by name; unknown segments get
            :class:`SegmentSpec` defaults and the quarantine segment is
            always ``quarantined``.
        roles: Operator role hierarchy (default: shipped ``roles.json``).
        datasets: Whether each dataset is anonymised (unknown: not).
        topics: Topic layout (default :class:`TopicLayout`).
        clock: Time source (default :class:`~iotguard.clock.SystemClock`).
        limits: Engine limits.
        policy_version: Version number of ``policy_set`` (from the store).
    """

    def __init__(
        self,
        policy_set: PolicySet | None,
        schema: PolicySchema | None = None,
        *,
        posture: PostureStore | None = None,
        segments: Mapping[str, SegmentSpec] | None = None,
        roles: Mapping[str, Sequence[str]] | None = None,
        datasets: Mapping[str, bool] | None = None,
        topics: TopicLayout | None = None,
        clock: Clock | None = None,
        limits: EngineLimits | None = None,
        policy_version: int = 0,
    ) -> None:
        self._schema = schema or default_schema()
        self.posture = posture if posture is not None else PostureStore()
        self._segments: dict[str, SegmentSpec] = dict(segments or {})
        self._roles: dict[str, tuple[str, ...]] = {
            k: tuple(v) for k, v in (roles if roles is not None else default_roles()).items()
        }
        self._datasets: dict[str, bool] = dict(datasets or {})
        self.topics = topics or TopicLayout()
        self._clock: Clock = clock or SystemClock()
        self.limits = limits or EngineLimits()
        self._lock = threading.RLock()
        # request -> (decision, valid from, valid until) as POSIX timestamps.
        self._cache: dict[AccessRequest, tuple[Decision, float, float]] = {}
        self._cache_index: dict[str, list[AccessRequest]] = {}
        self._generation = 0
        self._devices: dict[str, _DeviceState] = {}
        self._listeners: list[ChangeListener] = []
        self._loaded: _Loaded | None = None
        self.load_error: str = "no policy set loaded"
        self._roles_handle = self._build_roles_handle()
        self.posture.add_listener(self._on_posture_change)
        if policy_set is not None:
            try:
                self.load(policy_set, version=policy_version)
            except PolicyValidationError as exc:
                self.load_error = f"policy set failed to load: {exc}"
                _log.error("policy engine failed to load, denying every request: %s", exc)

    # ------------------------------------------------------------ lifecycle

    @property
    def loaded(self) -> bool:
        """True when a policy set is active."""
        return self._loaded is not None

    @property
    def policy_version(self) -> int:
        """Version of the active policy set (0 when none)."""
        return self._loaded.version if self._loaded else 0

    @property
    def policy_set(self) -> PolicySet | None:
        """The active policy set."""
        return self._loaded.policy_set if self._loaded else None

    def load(self, policy_set: PolicySet, *, version: int = 0) -> None:
        """Validate ``policy_set`` and make it the active one.

        The previous set stays active if this one does not validate.

        Raises:
            PolicyValidationError: The set does not parse or validate.
        """
        validate(policy_set, self._schema)
        try:
            handle = cedarpy.PolicySet.from_str(policy_set.text)
            permits = self._subset(policy_set, "permit")
            forbids = self._subset(policy_set, "forbid")
        except ValueError as exc:
            raise PolicyValidationError("policy set does not load", [str(exc)]) from exc
        with self._lock:
            self._loaded = _Loaded(policy_set, version, handle, permits, forbids)
            self.load_error = ""
            self._invalidate_all()

    @staticmethod
    def _subset(policy_set: PolicySet, effect: str) -> cedarpy.PolicySet | None:
        if not policy_set.ids_by_effect(effect):
            return None
        return cedarpy.PolicySet.from_json_str(policy_set.subset_json(effect))

    def unload(self, reason: str) -> None:
        """Drop the active policy set: every request is denied from now on."""
        with self._lock:
            self._loaded = None
            self.load_error = reason
            self._invalidate_all()

    def set_segment(self, name: str, spec: SegmentSpec) -> None:
        """Set a segment's attributes (sites, update window, quarantine flag)."""
        with self._lock:
            self._segments[name] = spec
            self._invalidate_all()

    def set_dataset(self, name: str, *, anonymised: bool) -> None:
        """Declare whether a dataset is anonymised (export rules read it)."""
        with self._lock:
            self._datasets[name] = anonymised
            self._invalidate_all()

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call ``listener`` after every invalidation (device id or ``None``)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------- deciding

    def decide(self, request: AccessRequest, *, now: datetime | None = None) -> Decision:
        """Decide one request (cached).

        Returns a :class:`Decision`; for a check that raises, use
        :meth:`authorize`.
        """
        when = now or self._clock.now()
        hit = self._cache.get(request)
        if hit is not None and hit[1] <= when.timestamp() < hit[2]:
            return hit[0]
        return self._evaluate(request, when)

    def decide_batch(
        self, requests: Iterable[AccessRequest], *, now: datetime | None = None
    ) -> list[Decision]:
        """Decide many requests at one instant (an ingest batch).

        Raises:
            ValueError: More than ``limits.max_batch`` requests.
        """
        batch = list(requests)
        if len(batch) > self.limits.max_batch:
            raise ValueError(f"batch of {len(batch)} exceeds max_batch {self.limits.max_batch}")
        when = now or self._clock.now()
        ts = when.timestamp()
        cache = self._cache
        out: list[Decision] = []
        for request in batch:
            hit = cache.get(request)
            if hit is not None and hit[1] <= ts < hit[2]:
                out.append(hit[0])
            else:
                out.append(self._evaluate(request, when))
        return out

    def authorize(self, request: AccessRequest, *, now: datetime | None = None) -> Decision:
        """Decide and raise unless allowed.

        Raises:
            PolicyDenied: The request is denied (the message carries the
                decision code and the policy ids; the public message does not).
        """
        decision = self.decide(request, now=now)
        if not decision.allowed:
            raise PolicyDenied(f"{request.describe()}: {decision.summary()}")
        return decision

    def decide_provisional(self, request: AccessRequest, posture: Posture, *,
                           now: datetime | None = None) -> Decision:
        """Decide a device request with a posture the store does not hold yet (enrollment); never cached."""
        loaded = self._loaded
        if loaded is None:
            return Decision(False, DecisionCode.ENGINE_NOT_LOADED, errors=(self.load_error,))
        if request.principal_type != "Device" or posture.device_id != request.principal_id:
            return self._invalid("a provisional posture must be the requesting device's")
        prepared = self._prepare_device(request, now or self._clock.now(), posture)
        return prepared if isinstance(prepared, Decision) else self._run(loaded, prepared)

    def decide_uncached(self, request: AccessRequest, *, now: datetime | None = None) -> Decision:
        """Decide without reading or writing the cache (benchmarks, audits)."""
        return self._evaluate(request, now or self._clock.now(), store=False)

    def explain(self, request: AccessRequest, *, now: datetime | None = None) -> Explanation:
        """Evaluate ``request`` afresh and report which policies matched."""
        when = now or self._clock.now()
        loaded = self._loaded
        if loaded is None:
            decision = Decision(False, DecisionCode.ENGINE_NOT_LOADED)
            return Explanation(request, decision, note=f"engine not loaded: {self.load_error}")
        prepared = self._prepare(request, when)
        if isinstance(prepared, Decision):
            return Explanation(request, prepared, note=self._why_unprepared(request, prepared))
        decision = self._run(loaded, prepared)
        permits = self._matching(loaded.permits, prepared)
        forbids = self._matching(loaded.forbids, prepared)
        return Explanation(
            request,
            decision,
            matched_permits=permits,
            matched_forbids=forbids,
            context=dict(prepared.context),
            entities=prepared.entity_list,
        )

    @staticmethod
    def _matching(subset: cedarpy.PolicySet | None, prepared: _Prepared) -> tuple[str, ...]:
        if subset is None:
            return ()
        res = cedarpy.is_authorized(prepared.request, subset, prepared.entities)
        ann = res.diagnostics.id_annotations_by_reason
        return tuple(sorted(ann.get(r, r) for r in res.diagnostics.reasons))

    def _why_unprepared(self, request: AccessRequest, decision: Decision) -> str:
        if decision.code == DecisionCode.UNKNOWN_PRINCIPAL:
            return f"device {request.principal_id!r} has no posture (not registered or revoked)"
        return "; ".join(decision.errors) or decision.code

    # ------------------------------------------------------------ internals

    def _evaluate(self, request: AccessRequest, now: datetime, *, store: bool = True) -> Decision:
        loaded = self._loaded
        if loaded is None:
            return Decision(False, DecisionCode.ENGINE_NOT_LOADED, errors=(self.load_error,))
        generation = self._generation
        prepared = self._prepare(request, now)
        if isinstance(prepared, Decision):
            return prepared
        decision = self._run(loaded, prepared)
        if store:
            with self._lock:
                if generation == self._generation and self._loaded is loaded:
                    if len(self._cache) >= self.limits.max_cache_entries:
                        self._cache.clear()
                        self._cache_index.clear()
                    self._cache[request] = (decision, prepared.valid_from, prepared.valid_until)
                    if prepared.depends_on is not None:
                        self._cache_index.setdefault(prepared.depends_on, []).append(request)
        return decision

    @staticmethod
    def _run(loaded: _Loaded, prepared: _Prepared) -> Decision:
        res = cedarpy.is_authorized(prepared.request, loaded.handle, prepared.entities)
        diag = res.diagnostics
        ann = diag.id_annotations_by_reason
        reasons = tuple(ann.get(r, r) for r in diag.reasons)
        errors = tuple(str(e) for e in diag.errors)
        if errors:
            return Decision(False, DecisionCode.EVALUATION_ERROR, reasons, errors, loaded.version)
        if res.allowed:
            return Decision(True, DecisionCode.ALLOW, reasons, (), loaded.version)
        code = DecisionCode.FORBIDDEN if reasons else DecisionCode.NO_PERMIT
        return Decision(False, code, reasons, (), loaded.version)

    def _prepare(self, request: AccessRequest, now: datetime) -> _Prepared | Decision:
        try:
            if request.principal_type == "Device":
                return self._prepare_device(request, now)
            if request.principal_type == "Operator":
                return self._prepare_operator(request, now)
        except ValueError as exc:
            # Entities Cedar refuses to parse (odd ids): deny, never guess.
            return Decision(
                False, DecisionCode.EVALUATION_ERROR, errors=(str(exc),), policy_version=self.policy_version
            )
        return self._invalid(f"unknown principal type {request.principal_type!r}")

    def _invalid(self, why: str) -> Decision:
        return Decision(
            False, DecisionCode.INVALID_REQUEST, errors=(why,), policy_version=self.policy_version
        )

    def _prepare_device(self, request: AccessRequest, now: datetime,
                        provisional: Posture | None = None) -> _Prepared | Decision:
        on_device = request.action in DEVICE_SELF_ACTIONS and request.resource_type == "Device"
        if not on_device and (request.action not in DEVICE_ACTIONS or request.resource_type != "Topic"):
            return self._invalid(f"no device action {request.action!r} on {request.resource_type}")
        device_id = request.principal_id
        posture = provisional or self.posture.get(device_id)
        if posture is None:
            return Decision(False, DecisionCode.UNKNOWN_PRINCIPAL, policy_version=self.policy_version)
        state = None if provisional else self._devices.get(device_id)
        if state is None or state.posture is not posture:
            state = self._build_device_state(posture, keep=provisional is None)
        ts = now.timestamp()
        if state.context is None or not state.context_valid_from <= ts < state.context_valid_until:
            ctx, until = self._device_context(posture, now)
            state.context, state.context_json = ctx, json.dumps(ctx)
            state.context_valid_from, state.context_valid_until = ts, until
        if on_device:
            return self._prepared_on_device(request, state)
        topic = request.resource_id
        if topic not in state.loaded_topics:
            extra = self._topic_entity(self.topics.parse(topic))
            added = state.handle.with_added_json_str(json.dumps([extra]))
            if topic in state.own_topics:
                # The device's own topics join its prebuilt entities on first use;
                # anything else (lateral attempts) is added for this request only.
                state.handle, state.entities = added, [*state.entities, extra]
                state.loaded_topics.add(topic)
                entities, entity_list = added, state.entities
            else:
                entities, entity_list = added, [*state.entities, extra]
        else:
            entities, entity_list = state.handle, state.entities
        cedar_request = {
            "principal": _uid("Device", device_id),
            "action": _action(request.action),
            "resource": _uid("Topic", topic),
            "context": state.context_json,
        }
        return _Prepared(
            cedar_request,
            entities,
            entity_list,
            state.context,
            state.context_valid_from,
            state.context_valid_until,
            device_id,
        )

    def _prepared_on_device(self, request: AccessRequest, state: _DeviceState) -> _Prepared:
        entities, entity_list = state.handle, state.entities
        target = request.resource_id
        if target != request.principal_id:
            other = self.posture.get(target)
            segment = other.effective_segment if other else "unassigned"
            extra = [self._device_entity(target, segment, other.model if other else ""),
                     self._segment_entity(segment)]
            entities = state.handle.with_added_json_str(json.dumps(extra))
            entity_list = [*state.entities, *extra]
        cedar_request = {
            "principal": _uid("Device", request.principal_id),
            "action": _action(request.action),
            "resource": _uid("Device", target),
            "context": state.context_json,
        }
        assert state.context is not None
        return _Prepared(cedar_request, entities, entity_list, state.context, state.context_valid_from,
                         state.context_valid_until, request.principal_id)

    def _prepare_operator(self, request: AccessRequest, now: datetime) -> _Prepared | Decision:
        accepted = OPERATOR_ACTIONS.get(request.action)
        if accepted is None:
            return self._invalid(f"unknown operator action {request.action!r}")
        if request.resource_type not in accepted:
            return self._invalid(f"{request.action} does not apply to {request.resource_type}")
        if request.role not in self._roles:
            return self._invalid(f"unknown role {request.role!r}")
        ts = now.timestamp()
        valid_until = ts - ts % _HOUR + _HOUR
        operator = {
            "uid": _uid("Operator", request.principal_id),
            "attrs": {},
            "parents": [_uid("Role", request.role)],
        }
        delta: list[dict[str, Any]] = [operator]
        context: dict[str, Any] = {"hour_utc": now.astimezone(UTC).hour, **_NO_TARGET}
        depends_on: str | None = None
        kind, rid = request.resource_type, request.resource_id
        if kind == "Device":
            depends_on = rid
            posture = self.posture.get(rid)
            segment = posture.effective_segment if posture else "unassigned"
            delta.append(self._device_entity(rid, segment, posture.model if posture else ""))
            delta.append(self._segment_entity(segment))
            if posture is not None:
                fresh, fresh_until = self._fresh(posture, ts)
                valid_until = min(valid_until, fresh_until)
                context.update(
                    target_trust_tier=posture.trust_tier,
                    target_risk_score=posture.risk_score,
                    target_fresh_attestation=fresh,
                )
        elif kind == "Segment":
            delta.append(self._segment_entity(rid))
        elif kind == "Dataset":
            anonymised = self._datasets.get(rid, False)
            delta.append({"uid": _uid("Dataset", rid), "attrs": {"anonymised": anonymised}, "parents": []})
        else:
            delta.append({"uid": _uid(kind, rid), "attrs": {}, "parents": []})
        entities = self._roles_handle.with_added_json_str(json.dumps(delta))
        cedar_request = {
            "principal": _uid("Operator", request.principal_id),
            "action": _action(request.action),
            "resource": _uid(kind, rid),
            "context": json.dumps(context),
        }
        entity_list = [*self._role_entities(), *delta]
        return _Prepared(cedar_request, entities, entity_list, context, ts, valid_until, depends_on)

    def _fresh(self, posture: Posture, ts: float) -> tuple[bool, float]:
        """Whether a verified attestation is fresh at ``ts``, and until when that holds."""
        if posture.trust_tier != "verified" or posture.attested_at is None:
            return False, float("inf")
        at = posture.attested_at.timestamp()
        end = at + self.limits.attestation_freshness_s
        if at <= ts < end:
            return True, end
        return False, (at if ts < at else float("inf"))

    def _device_context(self, posture: Posture, now: datetime) -> tuple[dict[str, Any], float]:
        ts = now.timestamp()
        valid_until = ts - ts % _HOUR + _HOUR
        cert_valid = False
        days_left = 0
        if posture.cert_not_after is not None:
            remaining = posture.cert_not_after.timestamp() - ts
            if remaining > 0:
                cert_valid = True
                days_left = math.ceil(remaining / _DAY)
                # days_left drops by one when the remaining time reaches (days_left - 1) days.
                valid_until = min(valid_until, ts + remaining - (days_left - 1) * _DAY)
        fresh, fresh_until = self._fresh(posture, ts)
        context = {
            "trust_tier": posture.trust_tier,
            "risk_score": posture.risk_score,
            "cert_valid": cert_valid,
            "cert_days_left": days_left,
            "fresh_attestation": fresh,
            "hour_utc": now.astimezone(UTC).hour,
            "declared_location": posture.declared_location,
        }
        return context, min(valid_until, fresh_until)

    def _segment_spec(self, name: str) -> SegmentSpec:
        spec = self._segments.get(name, SegmentSpec())
        if name == QUARANTINE_SEGMENT and not spec.quarantined:
            spec = SegmentSpec(True, spec.sites, spec.update_window_start, spec.update_window_end)
        return spec

    def _segment_entity(self, name: str) -> dict[str, Any]:
        return {"uid": _uid("Segment", name), "attrs": self._segment_spec(name).cedar_attrs(), "parents": []}

    @staticmethod
    def _device_entity(device_id: str, segment: str, model: str) -> dict[str, Any]:
        return {
            "uid": _uid("Device", device_id),
            "attrs": {"segment": _ref("Segment", segment), "model": model},
            "parents": [_uid("Segment", segment)],
        }

    @staticmethod
    def _topic_entity(info: TopicInfo) -> dict[str, Any]:
        attrs: dict[str, Any] = {"kind": info.kind, "direction": info.direction}
        if info.segment is not None:
            attrs["segment"] = _ref("Segment", info.segment)
        if info.device is not None:
            attrs["device"] = _ref("Device", info.device)
        return {"uid": _uid("Topic", info.topic), "attrs": attrs, "parents": []}

    def _build_device_state(self, posture: Posture, *, keep: bool = True) -> _DeviceState:
        segment = posture.effective_segment
        own = self.topics.device_topics(posture.segment, posture.device_id)
        telemetry = own[0]
        entities = [
            self._device_entity(posture.device_id, segment, posture.model),
            self._segment_entity(segment),
            self._topic_entity(self.topics.parse(telemetry)),
        ]
        handle = cedarpy.Entities.from_json_str(json.dumps(entities))
        state = _DeviceState(posture, entities, handle, frozenset(own), {telemetry})
        if keep:
            self._devices[posture.device_id] = state
        return state

    def _role_entities(self) -> list[dict[str, Any]]:
        return [
            {"uid": _uid("Role", role), "attrs": {}, "parents": [_uid("Role", p) for p in parents]}
            for role, parents in sorted(self._roles.items())
        ]

    def _build_roles_handle(self) -> cedarpy.Entities:
        return cedarpy.Entities.from_json_str(json.dumps(self._role_entities()))

    # --------------------------------------------------------- invalidation

    def _on_posture_change(self, device_id: str) -> None:
        with self._lock:
            self._generation += 1
            self._devices.pop(device_id, None)
            for key in self._cache_index.pop(device_id, ()):
                self._cache.pop(key, None)
        for listener in list(self._listeners):
            listener(device_id)

    def _invalidate_all(self) -> None:
        with self._lock:
            self._generation += 1
            self._cache.clear()
            self._cache_index.clear()
            self._devices.clear()
        for listener in list(self._listeners):
            listener(None)

    def cache_size(self) -> int:
        """Number of cached decisions."""
        return len(self._cache)
