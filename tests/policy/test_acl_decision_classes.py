"""The broker ACL derived through the engine's decision classes is the ACL deciding every topic afresh gives,
and a device in a class decided before costs no Cedar evaluation (containment latency, issue 13)."""

from __future__ import annotations

from datetime import timedelta

from iotguard.clock import FixedClock
from iotguard.policy import AccessRequest, PolicyEngine, default_policy_set
from iotguard.policy.acl import _candidates, derive_device_acl
from iotguard.policy.model import QUARANTINE_SEGMENT
from iotguard.policy.posture import Posture, PostureStore
from tests.policy.conftest import NOW


def _engine(n: int = 9) -> PolicyEngine:
    cert = NOW + timedelta(days=30)
    store = PostureStore([Posture(f"dev-{i}", f"seg-{i % 3}", trust_tier="verified", cert_not_after=cert,
                                  attested_at=NOW - timedelta(seconds=30)) for i in range(n)])
    return PolicyEngine(default_policy_set(), posture=store, clock=FixedClock(NOW))


def _afresh(engine: PolicyEngine) -> dict[str, list[tuple[str, str]]]:
    """Every candidate topic decided by Cedar, no cache of any kind."""
    postures = sorted(engine.posture, key=lambda p: p.device_id)
    segments = sorted({QUARANTINE_SEGMENT, *(p.segment for p in postures)})
    out: dict[str, list[tuple[str, str]]] = {}
    for p in postures:
        grants = []
        for topic in _candidates(engine, p.device_id, segments):
            w = engine.decide_uncached(AccessRequest.device(p.device_id, "publish", topic)).allowed
            r = engine.decide_uncached(AccessRequest.device(p.device_id, "subscribe", topic)).allowed
            if w or r:
                grants.append(("readwrite" if w and r else "write" if w else "read", topic))
        out[p.device_id] = sorted(grants, key=lambda g: g[1])
    return out


def test_acl_through_decision_classes_equals_every_topic_decided_afresh() -> None:
    engine = _engine()
    assert derive_device_acl(engine) == _afresh(engine)
    engine.posture.quarantine("dev-4")
    engine.posture.update("dev-2", risk_score=95)
    engine.posture.update("dev-5", trust_tier="unverified")
    assert derive_device_acl(engine) == _afresh(engine)
    assert derive_device_acl(engine)["dev-4"] != _afresh(_engine())["dev-4"]  # quarantine did change its ACL


def test_second_quarantined_device_of_a_class_costs_no_cedar_evaluation() -> None:
    engine = _engine()
    engine.posture.quarantine("dev-1")
    derive_device_acl(engine, device_ids=["dev-1"])
    first = engine.cache_stats()["evaluations"]
    assert first > 0
    engine.posture.quarantine("dev-4")  # same model, now in the same quarantine segment: the same class
    grants = derive_device_acl(engine, device_ids=["dev-4"])
    assert engine.cache_stats()["evaluations"] == first
    assert grants == {"dev-4": _afresh(engine)["dev-4"]}
