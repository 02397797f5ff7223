"""Staged rollouts through the real hub: devices check in and install over the device plane,
the health gates stop a broken release at its first cohort, a good one reaches 100 %."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.agent.update_channel import update_round
from iotguard.audit.events import AuditEvent
from iotguard.errors import RolloutStateError, UpdateRefused
from iotguard.hub.stores.attestation import StoredAppraisal
from iotguard.rollout import RolloutState, in_cohort
from tests.hub.conftest import HubParts
from tests.updates.hubside import HUB_MODEL, HubFirmware, firmware_hub

FLEET = [f"dev-{i:02d}" for i in range(12)]
STAGES = (20.0, 50.0, 100.0)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[HubFirmware]:
    yield from firmware_hub(tmp_path)


def _rollout_events(hub: HubParts) -> list[tuple[str, dict[str, object]]]:
    hub.deliver()
    log = hub.services.audit.log
    events = [AuditEvent.from_cbor(e) for e in log.entries(0, log.size())]
    return [(e.type, dict(e.details)) for e in events if e.type.startswith("rollout.")]


def test_a_broken_release_stops_by_itself_at_its_first_cohort(repo: HubFirmware) -> None:
    devices = {d: repo.device(d) for d in FLEET}
    first = [d for d in FLEET if in_cohort(HUB_MODEL, 2, d, STAGES[0])]
    assert 0 < len(first) < len(FLEET)
    repo.publish(2)
    repo.broken.add(2)
    rollouts = repo.hub.services.rollouts
    rollouts.start(HUB_MODEL, 2, actor="alice", stages=STAGES)
    rounds = {d: update_round(client, check_in) for d, (_a, client, check_in) in devices.items()}
    campaign = rollouts.store.get(f"{HUB_MODEL}-2")
    assert (campaign.state, campaign.stage, campaign.reason) == (RolloutState.ABORTED, 0, "rollback_rate")
    attempted = [d for d, r in rounds.items() if r.offered == 2]
    assert attempted and set(attempted) <= set(first)
    assert all(rounds[d].outcome == "rolled_back" for d in attempted)
    for _agent, client, check_in in devices.values():  # every device boots its committed factory firmware
        booted = client.slots.boot()
        assert (booted.image.version, booted.trial) == (1, False)
        assert update_round(client, check_in).offered == 0  # nothing is offered after the abort
    assert [t for t, _d in _rollout_events(repo.hub)] == ["rollout.started", "rollout.aborted"]


def test_a_good_release_reaches_the_whole_fleet(repo: HubFirmware) -> None:
    devices = {d: repo.device(d) for d in FLEET}
    repo.publish(2)
    rollouts = repo.hub.services.rollouts
    rollouts.start(HUB_MODEL, 2, actor="alice", stages=STAGES)
    seen_stages = []
    for _ in range(len(STAGES) + 1):
        for _agent, client, check_in in devices.values():
            update_round(client, check_in)
        seen_stages.append(rollouts.status(f"{HUB_MODEL}-2").campaign.percent)
        rollouts.tick()
    status = rollouts.status(f"{HUB_MODEL}-2")
    assert status.campaign.state is RolloutState.COMPLETED
    assert status.health.committed == len(FLEET)
    assert seen_stages[:3] == list(STAGES)
    assert all(client.slots.boot().image.version == 2 for _a, client, _c in devices.values())
    events = _rollout_events(repo.hub)
    assert [t for t, _d in events] == ["rollout.started", "rollout.advanced", "rollout.advanced",
                                       "rollout.completed"]
    assert [d["percent"] for _t, d in events] == [20.0, 50.0, 100.0, 100.0]


def test_failed_attestations_of_the_updated_cohort_pause_the_rollout(repo: HubFirmware) -> None:
    devices = {d: repo.device(d) for d in FLEET}
    repo.publish(2)
    rollouts = repo.hub.services.rollouts
    rollouts.start(HUB_MODEL, 2, actor="alice", stages=STAGES)
    updated = [d for d, (_a, client, check_in) in devices.items() if update_round(client, check_in).offered]
    assert updated
    repo.hub.services.attestation.store.record(StoredAppraisal(
        updated[0], datetime.now(UTC), "contraindicated", ("measurement_mismatch",), "2", "software"))
    (campaign,) = rollouts.tick()
    assert (campaign.state, campaign.reason) == (RolloutState.PAUSED, "attestation_failures")
    assert all(update_round(c, ci).offered == 0 for d, (_a, c, ci) in devices.items() if d not in updated)
    with pytest.raises(RolloutStateError):
        rollouts.pause(campaign.rollout_id, actor="alice")
    rollouts.abort(campaign.rollout_id, actor="alice", reason="bad attestation on canary")
    assert [t for t, _d in _rollout_events(repo.hub)] == ["rollout.started", "rollout.paused", "rollout.aborted"]


def test_telemetry_rejections_of_the_updated_cohort_pause_the_rollout(repo: HubFirmware) -> None:
    devices = {d: repo.device(d) for d in FLEET}
    repo.publish(2)
    rollouts = repo.hub.services.rollouts
    rollouts.start(HUB_MODEL, 2, actor="alice", stages=STAGES)
    updated = [d for d, (_a, client, check_in) in devices.items() if update_round(client, check_in).offered]
    repo.hub.store.count_rejections({(updated[0], "malformed"): 7}, now=datetime.now(UTC))
    (campaign,) = rollouts.tick()
    assert (campaign.state, campaign.reason) == (RolloutState.PAUSED, "telemetry_rejections")
    resumed = rollouts.resume(campaign.rollout_id, actor="alice")
    assert resumed.state is RolloutState.RUNNING


def test_a_rollout_needs_a_published_release(repo: HubFirmware) -> None:
    with pytest.raises(UpdateRefused):
        repo.hub.services.rollouts.start(HUB_MODEL, 9, actor="alice")


def test_rollout_routes_are_decided_by_cedar(repo: HubFirmware) -> None:
    repo.publish(2)
    hub = repo.hub
    body = {"model": HUB_MODEL, "version": 2, "stages": [50, 100]}
    assert hub.client.post("/v1/rollouts", json=body, headers=hub.operator_token("viewer")).status_code == 403
    admin = hub.operator_token("security-admin")
    r = hub.client.post("/v1/rollouts", json=body, headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["percent"]) == ("running", 50.0)
    viewer = hub.operator_token("viewer")
    assert hub.client.get(f"/v1/rollouts/{HUB_MODEL}-2", headers=viewer).json()["state"] == "running"
    assert hub.client.post(f"/v1/rollouts/{HUB_MODEL}-2/pause", json={}, headers=viewer).status_code == 403
    assert hub.client.post(f"/v1/rollouts/{HUB_MODEL}-2/pause", json={"reason": "lunch"},
                           headers=admin).json()["state"] == "paused"
    r = hub.client.post(f"/v1/rollouts/{HUB_MODEL}-2/pause", json={}, headers=admin)
    assert (r.status_code, r.json()["error"]) == (409, "rollout_state")
    assert hub.client.post(f"/v1/rollouts/{HUB_MODEL}-2/resume", headers=admin).json()["state"] == "running"
    assert hub.client.post(f"/v1/rollouts/{HUB_MODEL}-2/abort", json={}, headers=admin).json()["state"] == "aborted"
    assert hub.client.get("/v1/rollouts/nope", headers=viewer).status_code == 404
    assert [c["rollout_id"] for c in hub.client.get("/v1/rollouts", headers=viewer).json()] == [f"{HUB_MODEL}-2"]


def test_a_device_that_rolled_back_is_not_offered_the_release_again(repo: HubFirmware) -> None:
    from iotguard.rollout import HealthGates

    devices = {d: repo.device(d) for d in FLEET}
    repo.publish(2)
    repo.broken.add(2)
    rollouts = repo.hub.services.rollouts
    rollouts.start(HUB_MODEL, 2, actor="alice", stages=(100.0,), gates=HealthGates(max_rollback_rate=1.0))
    first = {d: update_round(c, ci) for d, (_a, c, ci) in devices.items()}
    assert all(r.outcome == "rolled_back" for r in first.values())
    assert rollouts.status(f"{HUB_MODEL}-2").campaign.state is RolloutState.RUNNING  # tolerated by its gates
    assert all(update_round(c, ci).offered == 0 for _a, c, ci in devices.values())


def test_two_hub_processes_moving_one_campaign_do_not_fail(repo: HubFirmware) -> None:
    """Maintenance ticks of two hub processes (or a tick and a device's rollback report) race: one move wins,
    the other reads it back instead of failing."""
    repo.publish(2)
    rollouts = repo.hub.services.rollouts
    campaign = rollouts.start(HUB_MODEL, 2, actor="alice", stages=STAGES)
    rollouts.pause(campaign.rollout_id, actor="bob")  # the other process moved it after we read it
    assert rollouts._apply(campaign).state is RolloutState.PAUSED


def test_device_reporting_success_but_failing_attestation_with_the_new_release_stops_the_rollout(
        repo: HubFirmware) -> None:
    """The gates read the verifier's appraisal, not the device's word: a committed report earns the device a
    challenge, and the appraisal of its evidence (contraindicated, claiming release 2) stops the rollout."""
    from iotguard.hub.outbox import outbox
    from iotguard.hub.services.attestation import CHALLENGE_KIND

    devices = {d: repo.device(d) for d in FLEET}
    repo.publish(2)
    rollouts = repo.hub.services.rollouts
    rollouts.start(HUB_MODEL, 2, actor="alice", stages=STAGES)
    rounds = {d: update_round(client, check_in) for d, (_a, client, check_in) in devices.items()}
    liar = next(d for d, r in rounds.items() if r.outcome == "committed")
    with repo.hub.store.engine.connect() as conn:  # the hub asked each reporting device for fresh evidence
        challenged = conn.execute(outbox.select().where(outbox.c.kind == CHALLENGE_KIND)).all()
    assert len(challenged) == sum(r.outcome == "committed" for r in rounds.values())
    repo.hub.services.attestation.store.record(StoredAppraisal(
        liar, datetime.now(UTC), "contraindicated", ("measurement_mismatch",), "2", "software"))
    (campaign,) = rollouts.tick()
    assert (campaign.state, campaign.reason) == (RolloutState.PAUSED, "attestation_failures")
    assert all(update_round(c, ci).offered == 0 for d, (_a, c, ci) in devices.items() if rounds[d].offered == 0)


def test_a_device_that_never_reports_is_still_judged_by_its_attestation(repo: HubFirmware) -> None:
    """Silence is not health: a device offered the release that reports nothing is appraised from the offer on."""
    devices = {d: repo.device(d) for d in FLEET}
    repo.publish(2)
    rollouts = repo.hub.services.rollouts
    rollouts.start(HUB_MODEL, 2, actor="alice", stages=STAGES)
    silent = next(d for d in FLEET if in_cohort(HUB_MODEL, 2, d, STAGES[0]))
    _agent, client, check_in = devices[silent]
    assert check_in(version=client.slots.active().version) == 2  # offered; it never reports back
    repo.hub.services.attestation.store.record(StoredAppraisal(
        silent, datetime.now(UTC), "contraindicated", ("measurement_mismatch",), "2", "software"))
    (campaign,) = rollouts.tick()
    assert (campaign.state, campaign.reason) == (RolloutState.PAUSED, "attestation_failures")


def test_a_stage_tells_its_devices_to_run_an_update_round_now(repo: HubFirmware) -> None:
    """Start (and each advance) sends the stage's waiting devices the authenticated ``update-check`` command."""
    import cbor2

    from iotguard.agent.update_schedule import UPDATE_COMMAND
    from iotguard.hub.outbox import outbox
    from iotguard.hub.services.update_commands import UPDATE_CHECK_COMMAND, UPDATE_CHECK_KIND

    assert UPDATE_CHECK_COMMAND == UPDATE_COMMAND
    devices = {d: repo.device(d) for d in FLEET}
    asked: list[str] = []
    for device_id, (agent, _client, _check_in) in devices.items():
        agent.on_update_command = lambda d=device_id: asked.append(d)  # type: ignore[misc]
    repo.publish(2)
    repo.hub.services.commands.attach(
        lambda topic, payload: devices[topic.split("/")[-2]][0]._on_command(payload))
    repo.hub.services.rollouts.start(HUB_MODEL, 2, actor="alice", stages=STAGES)
    with repo.hub.store.engine.connect() as conn:
        queued = [cbor2.loads(r.payload)["device_id"]
                  for r in conn.execute(outbox.select().where(outbox.c.kind == UPDATE_CHECK_KIND))]
    first = [d for d in FLEET if in_cohort(HUB_MODEL, 2, d, STAGES[0])]
    assert sorted(queued) == sorted(first)
    repo.hub.deliver()
    assert sorted(asked) == sorted(first)
