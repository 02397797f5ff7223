"""The incrementally derived Mosquitto ACL is always the ACL a full derivation gives, deriving far fewer devices."""

from __future__ import annotations

from datetime import timedelta

from iotguard.clock import FixedClock
from iotguard.policy import IncrementalAcl, PolicyEngine, default_policy_set, render_mosquitto_acl
from iotguard.policy.posture import Posture, PostureStore, SegmentSpec
from tests.policy.conftest import NOW

HUB = {"iotguard-hub": [("read", "iotguard/+/+/telemetry")]}


def _engine(n: int = 12) -> PolicyEngine:
    cert = NOW + timedelta(days=30)
    store = PostureStore([Posture(f"dev-{i}", f"seg-{i % 3}", trust_tier="verified", cert_not_after=cert,
                                  attested_at=NOW - timedelta(seconds=30)) for i in range(n)])
    return PolicyEngine(default_policy_set(), posture=store, clock=FixedClock(NOW))


def test_quarantine_derives_only_the_quarantined_device_and_matches_a_full_render() -> None:
    engine = _engine()
    acl = IncrementalAcl(engine, HUB)
    assert acl.render() == render_mosquitto_acl(engine, service_accounts=HUB)
    assert acl.last_derived == 12
    engine.posture.quarantine("dev-4")
    text = acl.render(changed={"dev-4"})
    assert acl.last_derived == 1
    assert text == render_mosquitto_acl(engine, service_accounts=HUB)
    assert "topic write iotguard/seg-1/dev-4/telemetry" not in text
    assert "topic write iotguard/seg-2/dev-5/telemetry" in text


def test_posture_changed_elsewhere_is_derived_again_even_if_not_named() -> None:
    """A change this process did not name (another hub process's quarantine, read from the database) must never
    leave stale grants in the ACL: that would release a quarantined device at the broker."""
    engine = _engine()
    acl = IncrementalAcl(engine, HUB)
    acl.render()
    engine.posture.quarantine("dev-7")  # as a posture refresh from the database would
    engine.posture.update("dev-2", risk_score=95)
    text = acl.render(changed={"dev-1"})
    assert acl.last_derived == 3
    assert text == render_mosquitto_acl(engine, service_accounts=HUB)
    assert "iotguard/seg-1/dev-7/telemetry" not in text


def test_enrolled_removed_devices_and_segment_changes_stay_exact() -> None:
    engine = _engine()
    acl = IncrementalAcl(engine, HUB)
    acl.render()
    engine.posture.put(Posture("dev-new", "seg-0", trust_tier="verified", cert_not_after=NOW + timedelta(days=3)))
    engine.posture.remove("dev-3")
    assert acl.render(changed={"dev-new", "dev-3"}) == render_mosquitto_acl(engine, service_accounts=HUB)
    assert acl.last_derived == 1
    engine.set_segment("seg-2", SegmentSpec(quarantined=True))
    assert acl.render(changed=()) == render_mosquitto_acl(engine, service_accounts=HUB)
    assert acl.last_derived == 12  # segment attributes are everyone's: all derived again
