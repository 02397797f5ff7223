"""Each subsystem's ``/metrics`` family moves when its event happens (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotguard.errors import ReplayError
from iotguard.hub.policy_store import save_posture
from iotguard.hub.services.learning import RunSettings
from iotguard.keys.rot import AttestationKey, AttestationKeyAlgorithm
from tests.attestation.conftest import Firmware
from tests.hub.console.conftest import ConsoleHub, attest
from tests.hub.metrics_scrape import scrape, value
from tests.updates.hubside import HUB_MODEL, firmware_hub


def test_an_appraisal_counts_in_attestation_and_moves_the_device_to_the_verified_tier(
        console: ConsoleHub, tmp_path: Path, firmware: Firmware) -> None:
    agent = console.hub.agent("dev-1")
    before = scrape(console.hub)
    assert value(before, "iotguard_devices_by_trust_tier", tier="unverified") == 1
    attest(console.hub, agent, tmp_path, firmware)
    after = scrape(console.hub)
    name = "iotguard_attestation_appraisals_total"
    assert value(after, name, status="affirming", reason="") == value(before, name, status="affirming", reason="") + 1
    assert value(after, "iotguard_devices_by_trust_tier", tier="verified") == 1
    assert value(after, "iotguard_devices_by_trust_tier", tier="unverified") == 0
    # an answer to a nonce never issued is refused, and counted with its reason
    with pytest.raises(ReplayError):
        console.hub.services.attestation.appraise("dev-1", bytes(32), b"evidence",
                                                  AttestationKey(AttestationKeyAlgorithm.EDDSA, b"key"))
    refused = scrape(console.hub)
    assert value(refused, name, status="refused", reason="nonce_unknown") == \
        value(after, name, status="refused", reason="nonce_unknown") + 1
    assert not any("dev-1" in str(labels) for _name, labels in after)  # no device id as a label value


def test_policy_decisions_are_counted_by_action_and_outcome(console: ConsoleHub) -> None:
    name = "iotguard_policy_decisions_total"
    before = scrape(console.hub)
    viewer = console.hub.operator_token("viewer")
    assert console.hub.client.post("/audit/checkpoint", headers=viewer).status_code == 403
    after = scrape(console.hub)
    allow = {"principal": "operator", "action": "view_alerts", "decision": "allow"}
    deny = {"principal": "operator", "action": "view_audit", "decision": "deny"}
    assert value(after, name, **allow) > value(before, name, **allow)  # the scrape itself was decided
    assert value(after, name, **deny) == value(before, name, **deny) + 1


def test_a_refused_device_request_is_counted_by_action_and_reason(console: ConsoleHub) -> None:
    name = "iotguard_device_requests_refused_total"
    before = scrape(console.hub)
    r = console.hub.client.post("/v1/attest", json={"request": "not a signed request", "signature": "AAAA"})
    assert r.status_code == 400, r.text
    after = scrape(console.hub)
    moved = {labels: v - before.get((n, labels), 0.0) for (n, labels), v in after.items()
             if n == name and v != before.get((n, labels), 0.0)}
    assert sum(moved.values()) == 1, moved
    assert all(dict(labels)["action"] == "attest" and dict(labels)["reason"] for labels in moved), moved


def test_audit_log_size_and_final_checkpoint_size_follow_the_log(console: ConsoleHub) -> None:
    before = scrape(console.hub)
    assert value(before, "iotguard_audit_final_checkpoint_size") == 0
    console.hub.agent("dev-1")
    console.hub.deliver()
    grown = scrape(console.hub)
    size = console.hub.services.audit.log.size()
    assert value(grown, "iotguard_audit_log_size") == size > value(before, "iotguard_audit_log_size")
    note = console.hub.client.post("/audit/checkpoint", headers=console.hub.operator_token("security-admin")).text
    console.hub.services.audit.log.save_final_checkpoint(note)  # what CheckpointFinality does after the quorum
    assert value(scrape(console.hub), "iotguard_audit_final_checkpoint_size") == size


def test_consent_changes_and_erasures_are_counted(console: ConsoleHub) -> None:
    name = "iotguard_privacy_events_total"
    consent = console.hub.services.consent
    console.hub.agent("dev-1")
    consent.link("owner-1", "dev-1")
    before = scrape(console.hub)
    consent.change("owner-1", "research", True, actor="owner")
    consent.change("owner-1", "research", False, actor="owner")
    consent.erase("owner-1", actor="privacy-officer")
    after = scrape(console.hub)
    for event in ("consent_granted", "consent_withdrawn", "erasure"):
        assert value(after, name, event=event) == value(before, name, event=event) + 1, event
    assert not any("owner-1" in str(labels) for _name, labels in after)  # no subject id as a label value


def test_aggregation_rounds_and_learning_runs_are_gauged_by_phase_and_status(console: ConsoleHub) -> None:
    hub = console.hub
    assert hub.services.aggregation is not None
    hub.services.aggregation.start(["sa-0", "sa-1", "sa-2"], 4, actor="analyst")
    assert value(scrape(hub), "iotguard_aggregation_rounds", phase="advertise") == 1
    agent = hub.agent("dev-1")
    posture = hub.services.posture.posture.update(agent.device_id, trust_tier="verified")
    save_posture(hub.store.engine, [posture], now=hub.services.clock.now())
    settings = RunSettings("digits", 24, 10, rounds=1, min_participants=1, fit={"epochs": 1, "batch_size": 16})
    hub.services.learning.start("run-1", settings, [agent.device_id], actor="alice")
    assert value(scrape(hub), "iotguard_learning_runs", status="running") == 1
    hub.services.learning.stop("run-1", actor="alice")
    samples = scrape(hub)
    assert value(samples, "iotguard_learning_runs", status="running") == 0
    assert value(samples, "iotguard_learning_runs", status="stopped") == 1


def test_rollout_campaigns_are_gauged_by_state(tmp_path: Path) -> None:
    for repo in firmware_hub(tmp_path):
        for i in range(2):
            repo.device(f"dev-{i}")
        repo.publish(2)
        assert value(scrape(repo.hub), "iotguard_rollout_campaigns", state="running") == 0
        campaign = repo.hub.services.rollouts.start(HUB_MODEL, 2, actor="alice", stages=(50.0, 100.0))
        assert value(scrape(repo.hub), "iotguard_rollout_campaigns", state="running") == 1
        repo.hub.services.rollouts.pause(campaign.rollout_id, actor="alice")
        samples = scrape(repo.hub)
        assert value(samples, "iotguard_rollout_campaigns", state="running") == 0
        assert value(samples, "iotguard_rollout_campaigns", state="paused") == 1
