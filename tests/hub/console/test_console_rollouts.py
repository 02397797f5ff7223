"""The rollouts page: campaigns with their cohort's progress and health gates; pause, resume and abort are
Cedar-decided (publish_firmware on the campaign, as the API), CSRF-protected and audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotguard.audit import AuditEvent
from iotguard.rollout import RolloutState
from tests.hub.console.conftest import ConsoleHub
from tests.updates.hubside import HUB_MODEL, HubFirmware, firmware_hub

ROLLOUT = f"{HUB_MODEL}-2"


@pytest.fixture
def rollout(tmp_path: Path) -> Iterator[tuple[ConsoleHub, HubFirmware]]:
    """Six devices of thermo-1 and a running campaign of release 2 in stages 50 % and 100 %."""
    for repo in firmware_hub(tmp_path):
        for i in range(6):
            repo.device(f"dev-{i}")
        repo.publish(2)
        repo.hub.services.rollouts.start(HUB_MODEL, 2, actor="alice", stages=(50.0, 100.0))
        yield ConsoleHub(repo.hub), repo


def _rollout_events(console: ConsoleHub) -> list[tuple[str, str]]:
    console.hub.deliver()
    log = console.hub.services.audit.log
    events = (AuditEvent.from_cbor(e) for e in log.entries(0, log.size()))
    return [(e.type, e.actor) for e in events if e.type.startswith("rollout.")]


def test_rollouts_page_shows_cohort_progress_and_health_gates(rollout: tuple[ConsoleHub, HubFirmware]) -> None:
    console, _repo = rollout
    status = console.hub.services.rollouts.status(ROLLOUT)
    page = console.login("viewer").get("/console/rollouts")
    assert page.status_code == 200
    section = page.text.split(f'id="rollout-{ROLLOUT}"')[1].split("</section>")[0]
    assert f'id="state-{ROLLOUT}">running<' in section
    assert "1 of 2: 50 % of the model" in section
    assert f"{status.health.cohort_size} device(s) in the cohort" in section
    gates = section.split(f'id="gates-{ROLLOUT}"')[1].split("</table>")[0]
    assert gates.count("nothing measured yet") == 3 and "abort" in gates and "5.0 %" in gates
    assert 'id="pause-' not in section and 'id="abort-' not in section  # moves a viewer may not make
    assert f'id="pause-{ROLLOUT}"' not in console.login("operator").get("/console/rollouts").text
    assert f'id="pause-{ROLLOUT}"' in console.login("security-admin").get("/console/rollouts").text


def test_operator_pauses_resumes_and_aborts_each_audited(rollout: tuple[ConsoleHub, HubFirmware]) -> None:
    console, _repo = rollout
    client = console.login("security-admin")
    csrf = console.csrf(client, "/console/rollouts")
    r = client.post(f"/console/rollouts/{ROLLOUT}/pause", data={"csrf": csrf, "reason": "wait for support"})
    assert r.status_code == 303 and r.headers["location"] == f"/console/rollouts?done=paused-{ROLLOUT}"
    campaign = console.hub.services.rollouts.store.get(ROLLOUT)
    assert campaign.state is RolloutState.PAUSED and campaign.reason == "wait for support"
    page = client.get(r.headers["location"]).text
    assert f"Done: paused-{ROLLOUT}." in page and f'id="resume-{ROLLOUT}"' in page

    assert client.post(f"/console/rollouts/{ROLLOUT}/resume", data={"csrf": csrf}).status_code == 303
    assert console.hub.services.rollouts.store.get(ROLLOUT).state is RolloutState.RUNNING
    assert client.post(f"/console/rollouts/{ROLLOUT}/abort", data={"csrf": csrf}).status_code == 303
    assert console.hub.services.rollouts.store.get(ROLLOUT).state is RolloutState.ABORTED
    page = client.get("/console/rollouts").text
    assert f'id="abort-{ROLLOUT}"' not in page and f'id="resume-{ROLLOUT}"' not in page  # final
    assert [t for t, _a in _rollout_events(console)] == ["rollout.started", "rollout.paused", "rollout.resumed",
                                                         "rollout.aborted"]
    assert all(a == "console-security-admin" for t, a in _rollout_events(console) if t != "rollout.started")
    # A move the campaign's state does not allow is refused, not a 500.
    assert client.post(f"/console/rollouts/{ROLLOUT}/resume", data={"csrf": csrf}).status_code == 409


def test_rollout_moves_need_csrf_and_the_policy(rollout: tuple[ConsoleHub, HubFirmware]) -> None:
    """Check for cross-site request forgery and privilege escalation on a fleet-wide firmware move."""
    console, _repo = rollout
    admin = console.login("security-admin")
    assert admin.post(f"/console/rollouts/{ROLLOUT}/abort", data={"csrf": "forged"}).status_code == 400
    for role in ("viewer", "operator"):  # publish_firmware is the security admin's (as POST /v1/rollouts/.../abort)
        client = console.login(role)
        csrf = console.csrf(client, "/console/fleet")
        assert client.post(f"/console/rollouts/{ROLLOUT}/abort", data={"csrf": csrf}).status_code == 403
    assert admin.post(f"/console/rollouts/{ROLLOUT}/explode",
                      data={"csrf": console.csrf(admin, "/console/rollouts")}).status_code == 400
    assert console.hub.services.rollouts.store.get(ROLLOUT).state is RolloutState.RUNNING
