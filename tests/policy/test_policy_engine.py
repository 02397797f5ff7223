"""Policy engine: named attacks, fail-closed loading, caching, sessions.

Each attack test has a companion that removes the check the attack runs
into (a mutated policy, or an engine without cache invalidation) and shows
the attack then succeeds: the test is what catches the check's removal.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from iotguard.clock import FixedClock
from iotguard.errors import ConfigError, PolicyDenied
from iotguard.policy import (
    AccessRequest,
    DecisionCode,
    EngineLimits,
    PolicyEngine,
    PolicySet,
    PolicyValidationError,
    SegmentSpec,
    SessionRegistry,
    authorize_ingest,
    authorize_operator,
    default_policy_set,
    operator_request,
    validate,
)
from tests.policy.conftest import NOW, fleet

A1_OWN = "iotguard/plant-a/dev-a1/telemetry"
B1_OWN = "iotguard/plant-b/dev-b1/telemetry"


def _mutant(old: str, new: str) -> PolicySet:
    text = default_policy_set().text
    assert old in text, "the check under test is no longer in the default policies"
    return PolicySet(text.replace(old, new))


def _engine(policy_set: PolicySet, clock: FixedClock | None = None) -> PolicyEngine:
    return PolicyEngine(policy_set, posture=fleet(), clock=clock or FixedClock(NOW))


# ------------------------------------------------------------ lateral movement


def test_lateral_publish_into_other_segment_denied(engine: PolicyEngine) -> None:
    """Check for lateral movement: a device publishing into another segment's topic."""
    assert engine.decide(AccessRequest.device("dev-a1", "publish", A1_OWN)).allowed
    for topic in (B1_OWN, "iotguard/plant-b/dev-a1/telemetry", "iotguard/plant-a/dev-a2/telemetry"):
        decision = engine.decide(AccessRequest.device("dev-a1", "publish", topic))
        assert not decision.allowed, topic
        assert decision.code == DecisionCode.NO_PERMIT
    with pytest.raises(PolicyDenied):
        engine.authorize(AccessRequest.device("dev-a1", "publish", B1_OWN))


@pytest.mark.parametrize(
    ("check", "replacement", "topic"),
    [
        # Without the segment check a device claims another segment under its own id.
        (
            "resource has segment && resource.segment == principal.segment",
            "true",
            "iotguard/plant-b/dev-a1/telemetry",
        ),
        # Without the owner check a device publishes as its segment peer.
        (
            "resource has device && resource.device == principal &&\n  resource has segment",
            "resource has segment",
            "iotguard/plant-a/dev-a2/telemetry",
        ),
    ],
)
def test_lateral_check_removed_lets_attack_through(check: str, replacement: str, topic: str) -> None:
    engine = _engine(default_policy_set())
    assert not engine.decide(AccessRequest.device("dev-a1", "publish", topic)).allowed
    weakened = _engine(_mutant(check, replacement))
    assert weakened.decide(AccessRequest.device("dev-a1", "publish", topic)).allowed


def test_ingest_batch_takes_segment_from_registry(engine: PolicyEngine) -> None:
    verdicts = authorize_ingest(engine, [("dev-a1", A1_OWN), ("dev-a1", B1_OWN), ("ghost", A1_OWN)])
    assert [v.allowed for v in verdicts] == [True, False, False]
    assert verdicts[0].policies == ("device-publish-own-telemetry",)
    assert verdicts[1].reason == "no_permit"
    assert verdicts[2].reason == "unknown_principal"


def test_batch_limit_is_enforced(clock: FixedClock) -> None:
    engine = PolicyEngine(
        default_policy_set(), posture=fleet(), clock=clock, limits=EngineLimits(max_batch=2)
    )
    with pytest.raises(ValueError, match="max_batch"):
        engine.decide_batch([AccessRequest.device("dev-a1", "publish", A1_OWN)] * 3)


# ------------------------------------------------------- privilege escalation


def test_viewer_cannot_call_operator_action(engine: PolicyEngine) -> None:
    """Check for privilege escalation: a viewer calling an operator action."""
    assert authorize_operator(engine, "vera", "viewer", "view_devices").allowed
    for action in ("quarantine", "manage_devices", "enroll"):
        with pytest.raises(PolicyDenied):
            authorize_operator(engine, "vera", "viewer", action, "Device", "dev-a1")
    assert authorize_operator(engine, "otto", "operator", "quarantine", "Device", "dev-a1").allowed


def test_privilege_check_removed_lets_viewer_quarantine() -> None:
    weakened = _mutant('principal in Role::"operator",', "principal,")
    decision = _engine(weakened).decide(operator_request("vera", "viewer", "quarantine", "Device", "dev-a1"))
    assert decision.allowed


def test_unmapped_operator_route_is_denied(engine: PolicyEngine) -> None:
    with pytest.raises(PolicyDenied):
        operator_request("sam", "security-admin", "format_disk")
    with pytest.raises(PolicyDenied):
        operator_request("sam", "security-admin", "quarantine", "Hub", "hub")
    decision = engine.decide(AccessRequest.operator("eve", "root", "view_devices"))
    assert decision.code == DecisionCode.INVALID_REQUEST and not decision.allowed


# ----------------------------------------------------------- stale posture


def test_failed_attestation_stops_publishing(engine: PolicyEngine) -> None:
    """Check for stale posture: a device whose attestation failed keeps publishing."""
    request = AccessRequest.device("dev-a1", "publish", A1_OWN)
    assert engine.decide(request).allowed
    engine.posture.update("dev-a1", trust_tier="failed")
    decision = engine.decide(request)
    assert not decision.allowed
    assert decision.reasons == ("attestation-failed",)


def test_stale_posture_check_removed_lets_device_publish() -> None:
    weakened = _mutant('when { context.trust_tier == "failed" }', "when { false }")
    engine = _engine(weakened)
    engine.posture.update("dev-a1", trust_tier="failed")
    assert engine.decide(AccessRequest.device("dev-a1", "publish", A1_OWN)).allowed


# ----------------------------------------------------------- cache poisoning


class _NoInvalidationEngine(PolicyEngine):
    def _on_posture_change(self, device_id: str) -> None:
        return None


def test_posture_change_invalidates_cached_allow(engine: PolicyEngine) -> None:
    """Check for cache poisoning: a posture change must invalidate the cached allow."""
    request = AccessRequest.device("dev-a1", "publish", A1_OWN)
    assert engine.decide(request).allowed
    assert engine.decide(request).allowed  # now served from the cache
    assert engine.cache_size() >= 1
    engine.posture.update("dev-a1", risk_score=85, attested_at=None)
    decision = engine.decide(request)
    assert not decision.allowed
    assert decision.reasons == ("high-risk-step-up",)


def test_cache_without_invalidation_serves_stale_allow(clock: FixedClock) -> None:
    engine = _NoInvalidationEngine(default_policy_set(), posture=fleet(), clock=clock)
    request = AccessRequest.device("dev-a1", "publish", A1_OWN)
    assert engine.decide(request).allowed
    engine.posture.update("dev-a1", risk_score=95, attested_at=None)
    assert engine.decide(request).allowed  # the poisoned answer the real engine never gives


def test_operator_decision_invalidated_by_target_posture(engine: PolicyEngine) -> None:
    request = operator_request("otto", "operator", "manage_devices", "Device", "dev-a1")
    assert engine.decide(request).allowed
    engine.posture.quarantine("dev-a1")
    assert engine.decide(request).reasons == ("quarantined-device-security-admin-only",)


def test_policy_change_invalidates_cache(engine: PolicyEngine) -> None:
    request = AccessRequest.device("dev-a1", "publish", A1_OWN)
    assert engine.decide(request).allowed
    engine.load(
        _mutant('@id("device-publish-own-telemetry")\npermit', '@id("device-publish-own-telemetry")\nforbid'),
        version=2,
    )
    decision = engine.decide(request)
    assert not decision.allowed and decision.policy_version == 2


def test_cached_decision_expires_with_time(clock: FixedClock) -> None:
    engine = _engine(default_policy_set(), clock)
    engine.posture.update("dev-a1", risk_score=85)  # allowed only while attestation is fresh
    request = AccessRequest.device("dev-a1", "publish", A1_OWN)
    assert engine.decide(request).allowed
    clock.advance(engine.limits.attestation_freshness_s)
    assert engine.decide(request).reasons == ("high-risk-step-up",)


def test_certificate_expiry_ends_cached_allow(clock: FixedClock) -> None:
    engine = _engine(default_policy_set(), clock)
    engine.posture.update("dev-a1", cert_not_after=NOW + timedelta(seconds=10))
    request = AccessRequest.device("dev-a1", "publish", A1_OWN)
    assert engine.decide(request).allowed
    clock.advance(10)
    assert engine.decide(request).reasons == ("certificate-invalid",)


def test_segment_change_invalidates(engine: PolicyEngine) -> None:
    request = AccessRequest.device("dev-a1", "publish", A1_OWN)
    assert engine.decide(request).allowed
    engine.set_segment("plant-a", SegmentSpec(sites=frozenset({"site-1"})))
    assert engine.decide(request).reasons == ("declared-location-outside-segment",)


# ------------------------------------------------------------- quarantine


def test_quarantine_takes_effect_at_ingest_api_and_sessions(engine: PolicyEngine) -> None:
    sessions = SessionRegistry(engine)
    sessions.open("mqtt-a1", AccessRequest.device("dev-a1", "subscribe", "iotguard/plant-a/dev-a1/cmd"))
    sessions.open(
        "mqtt-a1-att", AccessRequest.device("dev-a1", "subscribe", "iotguard/attest/dev-a1/challenge")
    )
    sessions.open("mqtt-b1", AccessRequest.device("dev-b1", "subscribe", "iotguard/plant-b/dev-b1/cmd"))
    assert authorize_ingest(engine, [("dev-a1", A1_OWN)])[0].allowed

    engine.posture.quarantine("dev-a1")

    assert authorize_ingest(engine, [("dev-a1", A1_OWN)])[0].policies == ("quarantine-attestation-only",)
    with pytest.raises(PolicyDenied):
        authorize_operator(engine, "otto", "operator", "update", "Device", "dev-a1")
    revoked = sessions.reevaluate()
    assert [r.session_id for r in revoked] == ["mqtt-a1"]
    assert len(sessions) == 2
    assert sessions.reevaluate() == []


def test_policy_change_reevaluates_every_session(engine: PolicyEngine) -> None:
    sessions = SessionRegistry(engine)
    sessions.open("s", AccessRequest.device("dev-b1", "subscribe", "iotguard/plant-b/dev-b1/cmd"))
    engine.unload("operator pulled the policy")
    assert [r.decision.code for r in sessions.reevaluate()] == [DecisionCode.ENGINE_NOT_LOADED]


def test_session_open_refuses_denied_request(engine: PolicyEngine) -> None:
    sessions = SessionRegistry(engine)
    with pytest.raises(PolicyDenied):
        sessions.open("s", AccessRequest.device("dev-a1", "subscribe", "iotguard/plant-b/dev-b1/cmd"))
    assert len(sessions) == 0


# ------------------------------------------------------------ fail closed


INVALID = PolicySet(
    '@id("typo")\npermit (principal is Device, action == Action::"publish", resource is Topic)\n'
    'when { resource.kinde == "telemetry" };'
)


def test_invalid_policy_set_cannot_be_validated() -> None:
    with pytest.raises(PolicyValidationError) as info:
        validate(INVALID)
    assert any("typo" in e for e in info.value.errors)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "permit (principal, action, resource);",  # no @id
        '@id("x") permit (principal, action, resource); @id("x") forbid (principal, action, resource);',
        '@id("x") permit (principal, action == Action::"reboot", resource);',  # unknown action
        "this is not cedar",
    ],
)
def test_bad_policy_sets_are_refused(text: str) -> None:
    with pytest.raises(PolicyValidationError):
        validate(PolicySet(text))


def test_engine_that_fails_to_load_denies_everything(clock: FixedClock) -> None:
    engine = PolicyEngine(INVALID, posture=fleet(), clock=clock)
    assert not engine.loaded and "typo" in engine.load_error
    requests = [
        AccessRequest.device("dev-a1", "publish", A1_OWN),
        operator_request("sam", "security-admin", "manage_policy"),
    ]
    for decision in engine.decide_batch(requests):
        assert not decision.allowed and decision.code == DecisionCode.ENGINE_NOT_LOADED
    explanation = engine.explain(requests[0])
    assert "typo" in explanation.note


def test_invalid_activation_keeps_previous_set(engine: PolicyEngine) -> None:
    with pytest.raises(PolicyValidationError):
        engine.load(INVALID, version=9)
    assert engine.loaded and engine.policy_version == 0
    assert engine.decide(AccessRequest.device("dev-a1", "publish", A1_OWN)).allowed


def test_permit_everything_is_not_default(engine: PolicyEngine) -> None:
    # Nothing broad: a device cannot reach any operator action and no topic outside its own.
    assert (
        engine.decide(AccessRequest.device("dev-a1", "publish", "iotguard/plant-a/broadcast")).code
        == "no_permit"
    )
    assert engine.decide(AccessRequest.device("dev-a1", "publish", "other/topic")).code == "no_permit"
    assert (
        engine.decide(AccessRequest("Device", "dev-a1", "manage_policy", "Hub", "hub")).code
        == "invalid_request"
    )


def test_evaluation_error_denies(engine: PolicyEngine) -> None:
    # A device id Cedar cannot parse as an entity must deny, not crash.
    decision = engine.decide(AccessRequest.device("dev-a1", "publish", "iotguard/" + "x" * 300))
    assert not decision.allowed


# -------------------------------------------------------------- explain


def test_explain_names_overridden_permit(engine: PolicyEngine) -> None:
    engine.posture.update("dev-a1", trust_tier="failed")
    explanation = engine.explain(AccessRequest.device("dev-a1", "publish", A1_OWN))
    assert explanation.decision.reasons == ("attestation-failed",)
    assert explanation.matched_permits == ("device-publish-own-telemetry",)
    assert "attestation-failed" in explanation.matched_forbids
    assert explanation.context["trust_tier"] == "failed"
    text = explanation.render()
    assert "denied by forbid: attestation-failed" in text
    assert "overridden: device-publish-own-telemetry" in text


def test_explain_unknown_device(engine: PolicyEngine) -> None:
    explanation = engine.explain(AccessRequest.device("ghost", "publish", A1_OWN))
    assert explanation.decision.code == DecisionCode.UNKNOWN_PRINCIPAL
    assert "ghost" in explanation.note
