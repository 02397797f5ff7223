"""Fixtures of the policy tests: a small fleet at a fixed instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iotguard.clock import FixedClock
from iotguard.policy import (
    PolicyEngine,
    Posture,
    PostureStore,
    SegmentSpec,
    default_policy_set,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def fleet() -> PostureStore:
    cert = NOW + timedelta(days=30)
    return PostureStore(
        [
            Posture(
                "dev-a1",
                "plant-a",
                trust_tier="verified",
                cert_not_after=cert,
                attested_at=NOW - timedelta(seconds=30),
            ),
            Posture(
                "dev-a2",
                "plant-a",
                trust_tier="verified",
                cert_not_after=cert,
                attested_at=NOW - timedelta(seconds=30),
            ),
            Posture(
                "dev-b1",
                "plant-b",
                trust_tier="verified",
                cert_not_after=cert,
                attested_at=NOW - timedelta(seconds=30),
            ),
        ]
    )


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def engine(clock: FixedClock) -> PolicyEngine:
    return PolicyEngine(
        default_policy_set(),
        posture=fleet(),
        segments={"plant-a": SegmentSpec(update_window_start=0, update_window_end=24)},
        clock=clock,
    )
