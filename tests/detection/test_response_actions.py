"""The playbook's ``reattest`` and ``rollback`` steps are real actions through the attestation and rollout
services, audited and linked to the alert (issue 13 with issues 11 and 12), not just recorded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest

from iotguard.agent.update_channel import update_round
from iotguard.audit.events import AuditEvent
from iotguard.detection import Alert, Severity
from iotguard.hub.outbox import outbox
from iotguard.hub.services.attestation import CHALLENGE_KIND
from iotguard.hub.services.audit import OutboxAuditSink
from iotguard.hub.services.detection import activate_playbook
from iotguard.rollout import RolloutState, in_cohort
from tests.hub.conftest import HubParts
from tests.updates.hubside import HUB_MODEL, HubFirmware, firmware_hub

T1 = 1_767_225_600.0
#: A playbook that asks for a rollback of a compromised device (waiting for approval, as destructive actions do).
ROLLBACK_BOOK = (b'format = "iotguard-playbook/1"\nname = "roll-back"\nrevision = 1\n'
                 b'[guard_rails]\ncooldown_s = 0\n'
                 b'[[rules]]\nname = "compromise"\ndetectors = ["scan_fanout"]\nactions = ["rollback"]\n')


def _alert(device: str, detector: str = "scan_fanout", at: float = T1) -> Alert:
    return Alert.create(device, detector, 42.0, Severity.HIGH, (at, at + 15.0), {"new_destinations": 42})


def _events(hub: HubParts, prefix: str) -> list[AuditEvent]:
    hub.deliver()
    log = hub.services.audit.log
    return [e for e in (AuditEvent.from_cbor(x) for x in log.entries(0, log.size())) if e.type.startswith(prefix)]


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[HubFirmware]:
    yield from firmware_hub(tmp_path)


def test_reattest_step_issues_a_live_attestation_challenge_to_the_device(repo: HubFirmware) -> None:
    hub = repo.hub
    repo.device("dev-00")
    repo.device("dev-01")
    sent: list[tuple[str, bytes]] = []
    hub.services.commands.attach(lambda topic, payload: sent.append((topic, payload)))
    actions = hub.services.detection.raise_alerts([_alert("dev-00", "autoencoder")])
    assert [(a.kind, a.outcome) for a in actions] == [("reattest", "done")]
    with hub.store.engine.connect() as conn:
        rows = conn.execute(outbox.select().where(outbox.c.kind == CHALLENGE_KIND)).all()
    assert len(rows) == 1
    queued = cbor2.loads(rows[0].payload)
    assert queued["device_id"] == "dev-00"
    # The nonce is the attestation service's own, single-use and live: evidence over it will be appraised.
    assert hub.services.attestation.store.nonce_pending("dev-00", queued["nonce"], datetime.now(UTC))
    hub.deliver()
    assert [t for t, _p in sent] == [t for t, _p in sent if t.endswith("/dev-00/cmd")] and len(sent) == 1
    [action] = [e for e in _events(hub, "detection.action")]
    assert (action.details["action"], action.details["outcome"]) == ("reattest", "done")
    assert action.details["alert_id"] == actions[0].alert_id


def test_rollback_step_stops_the_rollout_that_brought_the_device_its_release(repo: HubFirmware) -> None:
    """A device compromised after taking release 2: once an operator approves the playbook's rollback, the
    campaign is aborted (audited by hub.detection, linked reason), and no other device is offered release 2."""
    fleet = [f"dev-{i:02d}" for i in range(12)]
    devices = {d: repo.device(d) for d in fleet}
    repo.publish(2)
    rollouts = repo.hub.services.rollouts
    rollouts.start(HUB_MODEL, 2, actor="alice", stages=(20.0, 50.0, 100.0))
    rounds = {d: update_round(client, check_in) for d, (_a, client, check_in) in devices.items()}
    updated = next(d for d, r in rounds.items() if r.outcome == "committed")
    waiting = [d for d in fleet if not in_cohort(HUB_MODEL, 2, d, 20.0)]
    hub = repo.hub
    activate_playbook(Path(hub.cfg.data_dir), ROLLBACK_BOOK, actor="olga",
                      audit=OutboxAuditSink(hub.services.outbox, hub.services.clock), now=hub.services.clock.now())
    detection = hub.services.detection
    actions = detection.raise_alerts([_alert(updated)])
    rollback = next(a for a in actions if a.kind == "rollback")
    assert rollback.outcome == "awaiting_approval"  # destructive: an operator decides
    assert rollouts.store.get(f"{HUB_MODEL}-2").state is RolloutState.RUNNING
    done = detection.approve(rollback.id, "security-admin")
    assert done.outcome == "done"
    campaign = rollouts.store.get(f"{HUB_MODEL}-2")
    assert campaign.state is RolloutState.ABORTED and campaign.reason.startswith("detection rollback: alert ")
    aborted = _events(hub, "rollout.aborted")
    assert len(aborted) == 1 and aborted[0].actor == "hub.detection"
    linked = [e for e in _events(hub, "detection.action") if e.details["action"] == "rollback"]
    assert [e.details["outcome"] for e in linked] == ["awaiting_approval", "done"]
    assert all(e.details["alert_id"] == rollback.alert_id for e in linked)
    for d in waiting:  # the devices that had not taken release 2 are never offered it now
        _agent, client, check_in = devices[d]
        assert update_round(client, check_in).offered == 0
    # A second alert's rollback finds nothing left to stop: the outcome says so instead of pretending.
    later = next(a for a in detection.raise_alerts([_alert(updated, at=T1 + 4000)]) if a.kind == "rollback")
    assert detection.approve(later.id, "security-admin").outcome == "failed:rollback_finished"

def test_rollback_of_a_device_no_rollout_reached_fails_with_its_reason(repo: HubFirmware) -> None:
    hub = repo.hub
    repo.device("dev-00")
    activate_playbook(Path(hub.cfg.data_dir), ROLLBACK_BOOK, actor="olga",
                      audit=OutboxAuditSink(hub.services.outbox, hub.services.clock), now=hub.services.clock.now())
    actions = hub.services.detection.raise_alerts([_alert("dev-00")])
    rollback = next(a for a in actions if a.kind == "rollback")
    assert hub.services.detection.approve(rollback.id, "security-admin").outcome == "failed:rollback_no_rollout"
