"""Step-up: high-risk device operations need a recent attestation, and the hub asks for one.

The default policy ``device-request-step-up-recent-attestation`` forbids
re-keying and certificate renewal to a device in the attestation regime
whose last verified attestation is older than 15 minutes (Cedar context
``attestation_age_s``); it is annotated ``@step_up("attest")``, so the
device plane answers such a denial with an attestation challenge on the
device's ``cmd`` topic.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.agent import Agent
from iotguard.agent.attester import Attester
from iotguard.errors import EnrollmentError
from iotguard.hub.policy_store import save_posture
from iotguard.hub.services.attestation import CHALLENGE_KIND
from iotguard.policy.facts import NO_ATTESTATION_AGE_S, attestation_age
from iotguard.policy.posture import Posture
from tests.attestation.conftest import Device, Firmware, _make_device, endorse
from tests.hub.conftest import HubParts


def _age_attestation(hub: HubParts, device_id: str, seconds: float) -> None:
    """Pretend the last verified attestation happened ``seconds`` ago (in this process and in the database)."""
    updated = hub.services.posture.posture.update(
        device_id, attested_at=datetime.now(UTC) - timedelta(seconds=seconds))
    save_posture(hub.store.engine, [updated], now=datetime.now(UTC))


def _wait_for_appraisals(hub: HubParts, device_id: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(hub.services.attestation.history(device_id)) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def _answer_challenges(hub: HubParts, agent: Agent) -> int:
    sent: list[bytes] = []
    hub.services.commands.attach(lambda topic, payload: sent.append(payload))
    hub.deliver()
    for payload in sent:
        agent._on_command(payload)  # as the agent's MQTT client would
    return len(sent)


def test_renewal_with_stale_attestation_is_refused_and_the_hub_challenges(hub: HubParts, device: Device) -> None:
    """Attack: a device whose state is no longer vouched for by recent evidence tries to get a new certificate."""
    a = hub.agent("dev-1")
    if device.root.kind == "tpm2":
        endorse(hub, "dev-1", device.root)
    a.attester = Attester(device.root, device.boot())
    assert a.attest(a.attester)["status"] == "affirming"
    a.renew_certificate()  # attested just now
    _age_attestation(hub, "dev-1", 16 * 60)
    with pytest.raises(EnrollmentError, match="403 policy_denied"):
        a.renew_certificate()
    with pytest.raises(EnrollmentError, match="403 policy_denied"):
        a.rekey()
    assert hub.services.outbox.pending([CHALLENGE_KIND]) == 1  # one challenge, however many denials
    assert _answer_challenges(hub, a) == 1
    _wait_for_appraisals(hub, "dev-1", 2)
    assert hub.services.attestation.history("dev-1")[0].status == "affirming"
    a.renew_certificate()  # fresh evidence: allowed again


@pytest.fixture
def soft_device(request: pytest.FixtureRequest, tmp_path: Path, firmware: Firmware) -> Device:
    """A software-root device (the policy path is the same on both roots)."""
    return _make_device("software", request, tmp_path / "soft", firmware, "soft")[0]


def test_recent_attestation_renews_without_a_challenge(hub: HubParts, soft_device: Device) -> None:
    device = soft_device
    a = hub.agent("dev-1")
    assert a.attest(Attester(device.root, device.boot()))["status"] == "affirming"
    _age_attestation(hub, "dev-1", 14 * 60)
    a.renew_certificate()
    assert hub.services.outbox.pending([CHALLENGE_KIND]) == 0


def test_a_denial_without_step_up_annotation_sends_no_challenge(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    admin = hub.operator_token("security-admin")
    assert hub.client.post("/v1/devices/dev-1/quarantine", json={"reason": "scan"}, headers=admin).status_code == 200
    with pytest.raises(EnrollmentError, match="403 policy_denied"):
        a.renew_certificate()  # quarantine forbids it; fresh evidence is not what that rule asks for
    assert hub.services.outbox.pending([CHALLENGE_KIND]) == 0


def test_attestation_age_is_rounded_up_and_exact_at_multiples_of_a_minute() -> None:
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    posture = Posture("dev-1", segment="s", trust_tier="verified", attested_at=at)
    ts = at.timestamp()
    assert attestation_age(posture, ts) == (0, ts)
    assert attestation_age(posture, ts + 1) == (60, ts + 60)
    assert attestation_age(posture, ts + 900)[0] == 900
    assert attestation_age(posture, ts + 900.5)[0] == 960  # "> 900" holds exactly when the true age exceeds 900
    assert attestation_age(posture, ts - 5) == (0, ts)  # attested "in the future" (clock skew)
    never = Posture("dev-2", segment="s")
    assert attestation_age(never, ts)[0] == NO_ATTESTATION_AGE_S
