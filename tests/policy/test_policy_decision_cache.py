"""Decision classes: devices that look alike to the policies share decisions.

The attack is a decision leaking from one device to another: a policy that
singles out one device (``principal == Device::"dev-a2"``) must never be
answered with the decision computed for its look-alike neighbour.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from iotguard.clock import FixedClock
from iotguard.policy import (
    AccessRequest,
    PolicyEngine,
    PolicySet,
    Posture,
    PostureStore,
    SegmentSpec,
    decision_cache,
    default_policy_set,
)
from iotguard.policy.decision_cache import classes_shareable, context_attributes, literal_types
from tests.policy.conftest import NOW, fleet

A1_OWN = "iotguard/plant-a/dev-a1/telemetry"
A2_OWN = "iotguard/plant-a/dev-a2/telemetry"
SINGLE_OUT_A2 = (
    '\n@id("block-dev-a2")\nforbid (principal == Device::"dev-a2", action, resource is Topic)'
    ' unless { resource.kind == "attestation" };\n'
)


def test_look_alike_devices_share_one_evaluation() -> None:
    engine = PolicyEngine(default_policy_set(), posture=fleet(), clock=FixedClock(NOW))
    assert engine.decide(AccessRequest.device("dev-a1", "publish", A1_OWN)).allowed
    assert engine.decide(AccessRequest.device("dev-a2", "publish", A2_OWN)).allowed
    stats = engine.cache_stats()
    assert stats["evaluations"] == 1 and stats["class_hits"] == 1
    # Its own telemetry is a class apart from the neighbour's topic.
    assert not engine.decide(AccessRequest.device("dev-a2", "publish", A1_OWN)).allowed


def test_policy_naming_a_device_is_not_answered_from_its_neighbour() -> None:
    """Check for a decision leak: dev-a2 singled out by policy, dev-a1 alike in every fact."""
    policy = PolicySet(default_policy_set().text + SINGLE_OUT_A2)
    assert "Device" in literal_types(policy.policies)
    assert not classes_shareable(policy.policies)
    engine = PolicyEngine(policy, posture=fleet(), clock=FixedClock(NOW))
    assert engine.decide(AccessRequest.device("dev-a1", "publish", A1_OWN)).allowed
    decision = engine.decide(AccessRequest.device("dev-a2", "publish", A2_OWN))
    assert not decision.allowed and decision.reasons == ("block-dev-a2",)
    assert engine.cache_stats()["class_hits"] == 0


def test_without_the_literal_check_the_decision_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decision_cache, "CLASS_SAFE_LITERAL_TYPES", frozenset({"Action", "Segment", "Role", "Device"}))
    policy = PolicySet(default_policy_set().text + SINGLE_OUT_A2)
    engine = PolicyEngine(policy, posture=fleet(), clock=FixedClock(NOW))
    assert engine.decide(AccessRequest.device("dev-a1", "publish", A1_OWN)).allowed
    assert engine.decide(AccessRequest.device("dev-a2", "publish", A2_OWN)).allowed  # the leak


def test_default_policies_name_no_device_or_topic() -> None:
    assert literal_types(default_policy_set().policies) <= {"Action", "Role"}


SHORT_CERT = (
    '\n@id("renew-first")\nforbid (principal is Device, action, resource is Topic)'
    ' when { context.cert_days_left < 5 } unless { resource.kind == "enroll" };\n'
)


def test_context_attribute_a_policy_reads_is_part_of_the_class() -> None:
    """Check for a decision leak: a neighbour with a long certificate answers for one about to expire."""
    assert "cert_days_left" not in (context_attributes(default_policy_set().policies) or ())
    policy = PolicySet(default_policy_set().text + SHORT_CERT)
    assert "cert_days_left" in (context_attributes(policy.policies) or ())
    store = fleet()
    store.update("dev-a2", cert_not_after=NOW + timedelta(days=3))
    engine = PolicyEngine(policy, posture=store, clock=FixedClock(NOW))
    assert engine.decide(AccessRequest.device("dev-a1", "publish", A1_OWN)).allowed
    assert engine.decide(AccessRequest.device("dev-a2", "publish", A2_OWN)).reasons == ("renew-first",)


def test_context_used_whole_keeps_every_attribute() -> None:
    body = {"==": {"left": {"Var": "context"}, "right": {"Record": {}}}}
    whole = {"p": {"conditions": [{"kind": "when", "body": body}]}}
    assert context_attributes(whole) is None
    read = {"p": {"conditions": [{"kind": "when", "body": {".": {"left": {"Var": "context"}, "attr": "risk_score"}}}]}}
    assert context_attributes(read) == ("risk_score",)


@pytest.mark.parametrize("extra", ["", SHORT_CERT])
def test_shared_decisions_agree_with_cedar_on_a_changing_fleet(extra: str) -> None:
    """Every decision (exact cache, class, or fresh) equals an uncached Cedar evaluation."""
    rng = random.Random(5)
    clock = FixedClock(NOW)
    segments = ["plant-a", "plant-b", "plant-c"]
    store = PostureStore(
        Posture(
            f"dev-{i:02d}",
            segments[i % 3],
            model=rng.choice(["thermo-1", "cam-2"]),
            trust_tier=rng.choice(["verified", "verified", "degraded", "unverified"]),
            risk_score=rng.choice([0, 10, 45, 80]),
            cert_not_after=NOW + timedelta(hours=rng.choice([-1, 20, 30, 100, 500])),
            attested_at=NOW - timedelta(seconds=rng.choice([10, 200, 900])),
            declared_location=rng.choice(["", "site-1", "site-9"]),
        )
        for i in range(30)
    )
    engine = PolicyEngine(
        PolicySet(default_policy_set().text + extra),
        posture=store,
        segments={"plant-c": SegmentSpec(sites=frozenset({"site-1"}))},
        clock=clock,
    )
    devices = [p.device_id for p in store]
    mismatches = []
    for step in range(3000):
        d = rng.choice(devices)
        seg = store.require(d).segment
        other = rng.choice(devices)
        topic = rng.choice(
            [
                f"iotguard/{seg}/{d}/telemetry",
                f"iotguard/{seg}/{d}/cmd",
                f"iotguard/attest/{d}/evidence",
                f"iotguard/attest/{d}/challenge",
                f"iotguard/enroll/{d}/request",
                f"iotguard/{store.require(other).segment}/{other}/telemetry",
                f"iotguard/{segments[step % 3]}/{d}/telemetry",
                f"iotguard/{seg}/broadcast",
                "iotguard/x/y",
            ]
        )
        request = AccessRequest.device(d, rng.choice(["publish", "subscribe"]), topic)
        got = engine.decide(request)
        want = engine.decide_uncached(request)
        if got != want:
            mismatches.append((step, request, got, want))
        r = rng.random()
        if r < 0.03:
            store.update(rng.choice(devices), risk_score=rng.choice([0, 45, 80]))
        elif r < 0.05:
            store.update(rng.choice(devices), trust_tier="verified", attested_at=clock.now())
        elif r < 0.06:
            store.quarantine(rng.choice(devices))
        elif r < 0.07:
            store.release(rng.choice(devices))
        elif r < 0.09:
            clock.advance(rng.choice([30.0, 400.0, 1800.0]))
    assert mismatches == []
    stats = engine.cache_stats()
    assert stats["class_hits"] > 30 and stats["evaluations"] > 100
