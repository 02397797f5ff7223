"""The rollout domain: cohorts by device-id hash, stages, gates, state moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iotguard.errors import ConfigError, MalformedError, RolloutStateError
from iotguard.rollout import (
    CohortHealth,
    HealthGates,
    RolloutCampaign,
    RolloutState,
    Verdict,
    cohort_position,
    evaluate,
    in_cohort,
)

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
DEVICES = [f"dev-{i:04d}" for i in range(2000)]


def test_cohorts_are_deterministic_nested_and_about_the_right_size() -> None:
    assert cohort_position("thermo-1", 2, "dev-0001") == cohort_position("thermo-1", 2, "dev-0001")
    sizes = [sum(in_cohort("thermo-1", 2, d, p) for d in DEVICES) for p in (1, 10, 50, 100)]
    assert sizes[-1] == len(DEVICES)
    assert 5 <= sizes[0] <= 40 and 140 <= sizes[1] <= 260 and 900 <= sizes[2] <= 1100
    first = {d for d in DEVICES if in_cohort("thermo-1", 2, d, 10)}
    assert first <= {d for d in DEVICES if in_cohort("thermo-1", 2, d, 50)}


def test_another_release_takes_other_devices_first() -> None:
    a = {d for d in DEVICES if in_cohort("thermo-1", 2, d, 10)}
    b = {d for d in DEVICES if in_cohort("thermo-1", 3, d, 10)}
    assert a != b


@pytest.mark.parametrize("stages", [(), (10, 50), (50, 10, 100), (0, 100), (10, 10, 100), (10, 101)])
def test_bad_stages_are_refused(stages: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError):
        RolloutCampaign.start("r1", "thermo-1", 2, now=NOW, stages=stages)


def test_bad_ids_and_gates_are_refused() -> None:
    with pytest.raises(MalformedError):
        RolloutCampaign.start("Bad Id", "thermo-1", 2, now=NOW)
    with pytest.raises(ConfigError):
        HealthGates(max_rollback_rate=1.5)
    with pytest.raises(ConfigError):
        HealthGates(min_reported=0.0)


def test_state_moves() -> None:
    c = RolloutCampaign.start("r1", "thermo-1", 2, now=NOW)
    assert (c.state, c.percent, c.revision) == (RolloutState.RUNNING, 1.0, 0)
    c = c.advanced(NOW).paused("operator")
    assert (c.stage, c.state, c.revision) == (1, RolloutState.PAUSED, 2)
    assert not c.targets(DEVICES[0])
    with pytest.raises(RolloutStateError):
        c.advanced(NOW)
    with pytest.raises(RolloutStateError):
        c.paused("again")
    c = c.resumed(NOW).advanced(NOW).advanced(NOW)
    assert c.percent == 100.0 and all(c.targets(d) for d in DEVICES[:50])
    with pytest.raises(RolloutStateError):
        c.advanced(NOW)
    done = c.completed()
    assert done.state is RolloutState.COMPLETED
    with pytest.raises(RolloutStateError):
        done.aborted("late")
    assert c.aborted("operator").state is RolloutState.ABORTED


def test_rollbacks_abort_before_anything_else() -> None:
    c = RolloutCampaign.start("r1", "thermo-1", 2, now=NOW)
    health = CohortHealth(cohort_size=10, checked_in=10, committed=9, rolled_back=1, attested=9, attestation_failed=9)
    assert evaluate(c, health, NOW).verdict is Verdict.ABORT
    tolerant = RolloutCampaign.start("r2", "thermo-1", 2, now=NOW, gates=HealthGates(max_rollback_rate=0.2))
    healthy_enough = CohortHealth(10, checked_in=10, committed=9, rolled_back=1)
    assert evaluate(tolerant, healthy_enough, NOW).verdict is Verdict.ADVANCE


def test_attestation_failures_and_rejections_pause() -> None:
    c = RolloutCampaign.start("r1", "thermo-1", 2, now=NOW)
    failed = CohortHealth(10, checked_in=10, committed=10, attested=10, attestation_failed=1)
    assert evaluate(c, failed, NOW).reason == "attestation_failures"
    v = evaluate(c, CohortHealth(10, checked_in=10, committed=10, readings=90, rejections=10), NOW)
    assert (v.verdict, v.reason) == (Verdict.PAUSE, "telemetry_rejections")
    few = CohortHealth(10, checked_in=10, committed=10, readings=99, rejections=1)
    assert evaluate(c, few, NOW).verdict is Verdict.ADVANCE


def test_a_stage_waits_for_reports_and_its_soak_time() -> None:
    c = RolloutCampaign.start("r1", "thermo-1", 2, now=NOW, gates=HealthGates(soak=timedelta(minutes=10)))
    assert evaluate(c, CohortHealth(10, checked_in=10, committed=5), NOW).reason == "waiting_for_reports"
    assert evaluate(c, CohortHealth(10, checked_in=10, committed=10), NOW).reason == "soaking"
    later = NOW + timedelta(minutes=10)
    assert evaluate(c, CohortHealth(10, checked_in=10, committed=10), later).verdict is Verdict.ADVANCE
    last = RolloutCampaign.start("r2", "thermo-1", 2, now=NOW, stages=(100,))
    assert evaluate(last, CohortHealth(3, checked_in=3, committed=3), NOW).verdict is Verdict.COMPLETE
    # Devices that never check in do not hold a stage: only those offered the release count.
    assert evaluate(last, CohortHealth(3, checked_in=1, committed=1), NOW).verdict is Verdict.COMPLETE
    assert evaluate(c.paused("x"), CohortHealth(10, checked_in=10, committed=10), NOW).verdict is Verdict.HOLD


def test_a_stage_with_devices_never_passes_on_no_evidence() -> None:
    """A release nobody installed yet (the cohort did not check in) must not complete: one committed install at
    least. Before this rule, a broken release completed in the demo when its devices were slow to check in."""
    last = RolloutCampaign.start("r2", "thermo-1", 2, now=NOW, stages=(100,))
    assert evaluate(last, CohortHealth(3), NOW).reason == "waiting_for_reports"
    assert evaluate(last, CohortHealth(3, checked_in=2), NOW).reason == "waiting_for_reports"
    assert evaluate(last, CohortHealth(0), NOW).verdict is Verdict.COMPLETE  # an empty stage has nothing to wait for
