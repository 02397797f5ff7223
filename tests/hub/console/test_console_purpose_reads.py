"""The device page shows readings only for a purpose the viewer states: declared by the device's data contract,
consented to by its data subject, allowed by Cedar with those facts, and audited (issue 14's purpose binding)."""

from __future__ import annotations

from iotguard.audit import AuditEvent
from iotguard.hub.ingest import Incoming
from iotguard.privacy import ConsentState
from iotguard.wire import Reading, encode_reading
from tests.hub.conftest import HubParts
from tests.hub.console.conftest import ConsoleHub


def _accesses(console: ConsoleHub) -> list[AuditEvent]:
    console.hub.deliver()
    log = console.hub.services.audit.log
    return [e for e in (AuditEvent.from_cbor(b) for b in log.entries(0, log.size())) if e.type == "data.accessed"]


def seed_research_readings(hub: HubParts) -> None:
    """dev-1 of subject alice, who consented to research; readings collected for research, and one for
    heating control (contract basis, never consented to here)."""
    agent = hub.agent("dev-1")
    now = hub.services.clock.now()
    agent.attach_privacy("thermo-1", ConsentState("alice").grant("research", now))
    hub.services.consent.record_initial_consent("alice", "dev-1", {"research": True})
    for reading in agent.privacy.process({"temperature": 21.5, "humidity": 40.0}):  # type: ignore[union-attr]
        _s, envelope = agent.sealer.seal(encode_reading(reading))
        hub.processor.process([Incoming(agent.sealer.topic, envelope)])
    _s, envelope = agent.sealer.seal(encode_reading(Reading(1_700_000_000_000, {"temperature": 19.25},
                                                            "heating_control")))
    assert hub.processor.process([Incoming(agent.sealer.topic, envelope)]).stored == 1


def _fleet_with_research_readings(console: ConsoleHub) -> None:
    seed_research_readings(console.hub)


def test_operator_reads_for_a_consented_purpose_and_the_read_is_audited(console: ConsoleHub) -> None:
    _fleet_with_research_readings(console)
    client = console.login("operator")
    page = client.get("/console/devices/dev-1").text
    selector = page.split('id="purpose"')[1].split("</select>")[0]
    assert 'value="research"' in selector and "heating_control" not in selector  # not consented to
    assert 'id="readings"' not in page and "19.25" not in page  # nothing shown before a purpose is stated
    before = len(_accesses(console))

    page = client.get("/console/devices/dev-1", params={"purpose": "research"})
    assert page.status_code == 200
    table = page.text.split('id="readings"')[1].split("</table>")[0]
    assert 'id="shown-purpose">research<' in table and "19.25" not in table  # another purpose's reading withheld
    assert "withheld" in table
    accesses = _accesses(console)[before:]
    assert len(accesses) == 1
    assert accesses[0].actor == "console-operator" and accesses[0].subject == "dev-1"
    assert accesses[0].details["purpose"] == "research" and accesses[0].details["path"] == "console"
    assert accesses[0].details["withheld"] >= 1


def test_a_purpose_the_subject_did_not_consent_to_is_a_403_page_not_data(console: ConsoleHub) -> None:
    """Check for purpose creep: an operator naming heating_control (declared, never consented) in the URL."""
    _fleet_with_research_readings(console)
    r = console.login("operator").get("/console/devices/dev-1", params={"purpose": "heating_control"})
    assert r.status_code == 403 and "19.25" not in r.text and 'id="readings"' not in r.text
    refused = _accesses(console)[-1]
    assert {k: refused.details[k] for k in ("purpose", "path", "role", "refused")} == {
        "purpose": "heating_control", "path": "console", "role": "operator", "refused": 1}


def test_a_viewer_sees_the_count_but_never_readings(console: ConsoleHub) -> None:
    """Check for privilege escalation: a viewer gets the aggregate, no purpose to choose, and a 403 when it
    crafts the read itself."""
    _fleet_with_research_readings(console)
    client = console.login("viewer")
    page = client.get("/console/devices/dev-1").text
    held = console.hub.services.telemetry.reading_count("dev-1")
    assert held >= 2 and f'id="readings-held">{held} reading(s) held' in page
    assert 'id="readings-withheld"' in page and 'id="purpose"' not in page
    r = client.get("/console/devices/dev-1", params={"purpose": "research"})
    assert r.status_code == 403 and 'id="readings"' not in r.text and "21.5" not in r.text
