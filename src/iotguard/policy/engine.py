"""The policy decision point: Cedar policies, posture context, decision cache.

The engine turns an :class:`~iotguard.policy.model.AccessRequest` into a
Cedar request, with entities built from the posture store, the segment
attributes and the topic layout, and a context built from posture at the
decision time. Risk rules live in the Cedar policies; Python only supplies
facts.

Caching. Decisions are cached per request and per decision class (see
:mod:`iotguard.policy.decision_cache`); posture and policy changes
invalidate synchronously, before the call that made them returns.

Fail closed. An engine constructed with a policy set that does not load
denies every request with ``engine_not_loaded``; any Cedar evaluation error
denies with ``evaluation_error`` even where Cedar would have skipped a
failing forbid.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import cedarpy

from iotguard.clock import Clock, SystemClock
from iotguard.errors import PolicyDenied
from iotguard.policy.decision_cache import DecisionCache, DecisionClass, classes_shareable, context_attributes
from iotguard.policy.decision_counts import DecisionCounts
from iotguard.policy.facts import (
    HOUR,
    DeviceFacts,
    action_uid,
    device_entity,
    operator_target,
    role_entities,
    segment_entity,
    uid,
)
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
from iotguard.policy.topics import TopicLayout

__all__ = ["ChangeListener", "EngineLimits", "PolicyEngine"]

_log = logging.getLogger(__name__)

#: Called after decisions may have changed: with a device id, or ``None``
#: when everything may have changed (policy, roles or segments).
ChangeListener = Callable[[str | None], None]

_ABSENT: Final = ("absent",)


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
    shareable: bool
    context_attributes: tuple[str, ...] | None


@dataclass
class _Prepared:
    request: dict[str, Any]
    entities: cedarpy.Entities
    entity_list: list[dict[str, Any]]
    context: dict[str, Any]
    valid_from: float
    valid_until: float
    depends_on: str | None


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
        self._cache = DecisionCache(self.limits.max_cache_entries)
        self.decisions = DecisionCounts()  #: decisions of decide/decide_batch/decide_provisional (``/metrics``)
        self._devices: dict[str, DeviceFacts] = {}
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
        shareable = classes_shareable(policy_set.policies)
        attributes = context_attributes(policy_set.policies)
        with self._lock:
            self._loaded = _Loaded(policy_set, version, handle, permits, forbids, shareable, attributes)
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

    def segment_specs(self) -> dict[str, SegmentSpec]:
        """The segments' attributes as set (a copy; segments never set have the defaults)."""
        return dict(self._segments)  # one C-level copy: atomic under the GIL

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
        hit = self._cache.entries.get(request)
        decision = hit[0] if hit is not None and hit[1] <= when.timestamp() < hit[2] else self._evaluate(request, when)
        self.decisions.add(request, decision)
        return decision

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
        cache = self._cache.entries
        out: list[Decision] = []
        for request in batch:
            hit = cache.get(request)
            if hit is not None and hit[1] <= ts < hit[2]:
                out.append(hit[0])
            else:
                out.append(self._evaluate(request, when))
        self.decisions.add_many(zip(batch, out, strict=True))
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
        if request.action not in DEVICE_SELF_ACTIONS or request.resource_type != "Device":
            return self._invalid(f"no device action {request.action!r} on {request.resource_type}")
        when = now or self._clock.now()
        facts = DeviceFacts.build(posture, self._segment_spec(posture.effective_segment), self.topics)
        facts.refresh_context(when, when.timestamp(), self.limits.attestation_freshness_s)
        prepared = self._prepare_on_device(request, facts)
        decision = prepared if isinstance(prepared, Decision) else self._run(loaded, prepared)
        self.decisions.add(request, decision)
        return decision

    def decide_uncached(self, request: AccessRequest, *, now: datetime | None = None,
                        shared: bool = False) -> Decision:
        """Decide without the per-request cache (benchmarks, audits); ``shared``: do use the decision classes
        (ACL derivation: a device in the same class as one derived before costs no Cedar evaluation)."""
        return self._evaluate(request, now or self._clock.now(), store=False, shared=shared)

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

    def _evaluate(self, request: AccessRequest, now: datetime, *, store: bool = True, shared: bool = False) -> Decision:
        loaded = self._loaded
        if loaded is None:
            return Decision(False, DecisionCode.ENGINE_NOT_LOADED, errors=(self.load_error,))
        cache = self._cache
        generation, epoch = cache.generation, cache.epoch
        if request.principal_type == "Device":
            return self._evaluate_device(loaded, request, now, generation, epoch, store, shared or store)
        prepared = self._prepare(request, now)
        if isinstance(prepared, Decision):
            return prepared
        decision = self._run(loaded, prepared)
        if store:
            cache.put(request, decision, prepared.valid_from, prepared.valid_until, prepared.depends_on, generation)
        return decision

    def _evaluate_device(
        self, loaded: _Loaded, request: AccessRequest, now: datetime, generation: int, epoch: int, store: bool,
        shared: bool,
    ) -> Decision:
        if request.resource_type == "Device":
            # Requests a device makes about itself (renew, re-key, receipts, ...) are
            # rare and may name another device: decided per request, never shared.
            prepared = self._prepare(request, now)
            return prepared if isinstance(prepared, Decision) else self._run(loaded, prepared)
        if request.action not in DEVICE_ACTIONS or request.resource_type != "Topic":
            return self._invalid(f"devices may only publish/subscribe on topics, not {request.action!r}")
        device_id = request.principal_id
        facts = self._device_facts(device_id)
        if facts is None:
            return Decision(False, DecisionCode.UNKNOWN_PRINCIPAL, policy_version=self.policy_version)
        facts.refresh_context(now, now.timestamp(), self.limits.attestation_freshness_s)
        cache = self._cache
        key: DecisionClass | None = None
        if shared and loaded.shareable:
            shape = facts.shape(request.resource_id, self.topics)
            if shape is not None:
                context_key = facts.context_key
                if context_key is None:
                    context_key = facts.context_key = self._context_key(loaded, facts.context, facts.context_json)
                key = (epoch, request.action, facts.class_key, shape, context_key)
                decision = cache.shared(key)
                if decision is not None:
                    if store:
                        cache.put(request, decision, facts.valid_from, facts.valid_until, device_id, generation)
                    return decision
        prepared = self._prepare_device(request, facts)
        if isinstance(prepared, Decision):
            return prepared
        decision = self._run(loaded, prepared)
        cache.evaluations += 1
        if store:
            cache.put(request, decision, facts.valid_from, facts.valid_until, device_id, generation)
        if key is not None:
            cache.put_shared(key, decision, epoch)
        return decision

    @staticmethod
    def _context_key(loaded: _Loaded, context: Mapping[str, Any], context_json: str) -> Hashable:
        if loaded.context_attributes is None:
            return context_json
        # A marker no JSON value equals stands for an attribute the context lacks.
        return tuple(context.get(name, _ABSENT) for name in loaded.context_attributes)

    @staticmethod
    def _run(loaded: _Loaded, prepared: _Prepared) -> Decision:
        res = cedarpy.is_authorized(prepared.request, loaded.handle, prepared.entities)
        diag = res.diagnostics
        ann = diag.id_annotations_by_reason
        # Cedar reports reasons as an unordered set; sorted, equal decisions compare equal.
        reasons = tuple(sorted(ann.get(r, r) for r in diag.reasons))
        errors = tuple(str(e) for e in diag.errors)
        if errors:
            return Decision(False, DecisionCode.EVALUATION_ERROR, reasons, errors, loaded.version)
        if res.allowed:
            return Decision(True, DecisionCode.ALLOW, reasons, (), loaded.version)
        code = DecisionCode.FORBIDDEN if reasons else DecisionCode.NO_PERMIT
        return Decision(False, code, reasons, (), loaded.version)

    def _prepare(self, request: AccessRequest, now: datetime) -> _Prepared | Decision:
        if request.principal_type == "Device":
            on_device = request.action in DEVICE_SELF_ACTIONS and request.resource_type == "Device"
            if not on_device and (request.action not in DEVICE_ACTIONS or request.resource_type != "Topic"):
                return self._invalid(f"no device action {request.action!r} on {request.resource_type}")
            facts = self._device_facts(request.principal_id)
            if facts is None:
                return Decision(False, DecisionCode.UNKNOWN_PRINCIPAL, policy_version=self.policy_version)
            facts.refresh_context(now, now.timestamp(), self.limits.attestation_freshness_s)
            if on_device:
                return self._prepare_on_device(request, facts)
            return self._prepare_device(request, facts)
        if request.principal_type == "Operator":
            try:
                return self._prepare_operator(request, now)
            except ValueError as exc:
                return self._cedar_refused(exc)
        return self._invalid(f"unknown principal type {request.principal_type!r}")

    def _invalid(self, why: str) -> Decision:
        return Decision(
            False, DecisionCode.INVALID_REQUEST, errors=(why,), policy_version=self.policy_version
        )

    def _cedar_refused(self, exc: ValueError) -> Decision:
        # Entities Cedar refuses to parse (odd ids): deny, never guess.
        return Decision(False, DecisionCode.EVALUATION_ERROR, errors=(str(exc),), policy_version=self.policy_version)

    def _device_facts(self, device_id: str) -> DeviceFacts | None:
        posture = self.posture.get(device_id)
        if posture is None:
            return None
        facts = self._devices.get(device_id)
        if facts is None or facts.posture is not posture:
            facts = DeviceFacts.build(posture, self._segment_spec(posture.effective_segment), self.topics)
            self._devices[device_id] = facts
        return facts

    def _prepare_device(self, request: AccessRequest, facts: DeviceFacts) -> _Prepared | Decision:
        topic = request.resource_id
        try:
            entities, entity_list = facts.entities_for(self.topics.parse(topic))
        except ValueError as exc:
            return self._cedar_refused(exc)
        cedar_request = {
            "principal": uid("Device", request.principal_id),
            "action": action_uid(request.action),
            "resource": uid("Topic", topic),
            "context": facts.context_json,
        }
        return _Prepared(
            cedar_request,
            entities,
            entity_list,
            facts.context,
            facts.valid_from,
            facts.valid_until,
            request.principal_id,
        )

    def _prepare_on_device(self, request: AccessRequest, facts: DeviceFacts) -> _Prepared | Decision:
        target = request.resource_id
        extra: list[dict[str, Any]] = []
        if target != request.principal_id:
            other = self.posture.get(target)
            segment = other.effective_segment if other else "unassigned"
            extra = [device_entity(target, segment, other.model if other else ""),
                     segment_entity(segment, self._segment_spec(segment))]
        try:
            entities, entity_list = facts.entities_with(extra)
        except ValueError as exc:
            return self._cedar_refused(exc)
        cedar_request = {
            "principal": uid("Device", request.principal_id),
            "action": action_uid(request.action),
            "resource": uid("Device", target),
            "context": facts.context_json,
        }
        return _Prepared(cedar_request, entities, entity_list, facts.context, facts.valid_from, facts.valid_until,
                         request.principal_id)

    def _prepare_operator(self, request: AccessRequest, now: datetime) -> _Prepared | Decision:
        accepted = OPERATOR_ACTIONS.get(request.action)
        if accepted is None:
            return self._invalid(f"unknown operator action {request.action!r}")
        if request.resource_type not in accepted:
            return self._invalid(f"{request.action} does not apply to {request.resource_type}")
        if request.role not in self._roles:
            return self._invalid(f"unknown role {request.role!r}")
        ts = now.timestamp()
        valid_until = ts - ts % HOUR + HOUR
        operator = {
            "uid": uid("Operator", request.principal_id),
            "attrs": {},
            "parents": [uid("Role", request.role)],
        }
        delta: list[dict[str, Any]] = [operator]
        context: dict[str, Any] = {"hour_utc": now.astimezone(UTC).hour}
        if request.purpose is not None:
            context.update(request.purpose.context())
        kind, rid = request.resource_type, request.resource_id
        target = operator_target(kind, rid, self.posture.get(rid) if kind == "Device" else None,
                                 self._segment_spec, self._datasets, ts, self.limits.attestation_freshness_s)
        delta += target.entities
        context.update(target.context)
        valid_until = min(valid_until, target.valid_until)
        depends_on = rid if kind == "Device" else None
        entities = self._roles_handle.with_added_json_str(json.dumps(delta))
        cedar_request = {
            "principal": uid("Operator", request.principal_id),
            "action": action_uid(request.action),
            "resource": uid(kind, rid),
            "context": json.dumps(context),
        }
        entity_list = [*role_entities(self._roles), *delta]
        return _Prepared(cedar_request, entities, entity_list, context, ts, valid_until, depends_on)

    def _segment_spec(self, name: str) -> SegmentSpec:
        spec = self._segments.get(name, SegmentSpec())
        if name == QUARANTINE_SEGMENT and not spec.quarantined:
            spec = SegmentSpec(True, spec.sites, spec.update_window_start, spec.update_window_end)
        return spec

    def _build_roles_handle(self) -> cedarpy.Entities:
        return cedarpy.Entities.from_json_str(json.dumps(role_entities(self._roles)))

    # --------------------------------------------------------- invalidation

    def _on_posture_change(self, device_id: str) -> None:
        with self._lock:
            self._cache.invalidate_device(device_id)
            self._devices.pop(device_id, None)
        for listener in list(self._listeners):
            listener(device_id)

    def _invalidate_all(self) -> None:
        with self._lock:
            self._cache.invalidate_all()
            self._devices.clear()
        for listener in list(self._listeners):
            listener(None)

    def cache_size(self) -> int:
        """Number of decisions cached per request."""
        return len(self._cache)

    def cache_stats(self) -> dict[str, int]:
        """Cache counters: ``entries``, ``classes``, ``evaluations`` (Cedar runs), ``class_hits``."""
        return self._cache.stats()
