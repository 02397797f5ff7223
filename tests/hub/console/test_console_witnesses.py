"""The audit page shows the final checkpoint's witness cosignatures, and its verify button checks them
against the configured witness keys and quorum, and that the current tree extends the final checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotguard.audit.note import add_signatures, parse_note
from iotguard.clock import FixedClock
from iotguard.hub.witnessing import CheckpointFinality
from iotguard.keys import KeyKind, SoftwareKeyStore
from tests.audit.test_audit_witness_protocol import T0, LocalEndpoint, make_witness
from tests.hub.conftest import HubParts, make_hub
from tests.hub.console.conftest import ConsoleHub


def make_final(parts: HubParts, tmp_path: Path) -> None:
    """Configure two witnesses (quorum 2) for ``parts``' hub, have both cosign a checkpoint of its log
    (made final), then grow the log past it."""
    keys = SoftwareKeyStore(tmp_path / "witness-keys")
    for label in ("w1", "w2"):
        keys.generate(label, KeyKind.ED25519)
    log = parts.services.audit.log
    witnesses = [make_witness(keys, tmp_path, label, log.verifier) for label in ("w1", "w2")]
    path = tmp_path / "witnesses.json"
    path.write_text(json.dumps([{"url": f"https://{w.verifier.name.split('/')[0]}:8443", "key": w.verifier.vkey()}
                                for w in witnesses]))
    # Set after the services are built so that no maintenance tick tries to reach these witnesses over
    # HTTPS; the witnesses here answer in-process (LocalEndpoint), the console reads the same settings.
    parts.services.cfg.witnesses_file = str(path)
    parts.services.cfg.witness_quorum = 2
    parts.agent("dev-1")
    parts.deliver()
    finality = CheckpointFinality(log, [LocalEndpoint(w, log) for w in witnesses], 2, FixedClock(T0))
    assert finality(log.publish_checkpoint(T0)) is not None
    parts.agent("dev-2")  # the log grows past the final checkpoint
    parts.deliver()


@pytest.fixture
def witnessed(tmp_path: Path) -> Iterator[ConsoleHub]:
    parts = make_hub(tmp_path)
    make_final(parts, tmp_path)
    yield ConsoleHub(parts)
    parts.store.engine.dispose()


def test_audit_page_lists_each_witness_cosignature_verified(witnessed: ConsoleHub) -> None:
    final = witnessed.hub.services.audit.log.latest_final_checkpoint()
    assert final is not None
    page = witnessed.login("security-admin").get("/console/audit")
    assert page.status_code == 200
    table = page.text.split('id="cosignatures"')[1].split("</table>")[0]
    assert table.count(">verified<") == 2 and "w1.test/witness" in table and "w2.test/witness" in table
    assert "2026-07-01 00:00:00" in table  # the cosignature time (T0)
    assert "the quorum is 2" in page.text
    assert final.split("\n")[1] in page.text.split('id="final-summary"')[1].split("</p>")[0]


def test_verify_button_checks_cosignatures_and_that_the_tree_extends_the_final_checkpoint(
        witnessed: ConsoleHub) -> None:
    client = witnessed.login("security-admin")
    csrf = witnessed.csrf(client, "/console/audit")
    r = client.post("/console/audit/verify", data={"csrf": csrf})
    assert r.status_code == 200
    result = r.text.split('id="verify-result">')[1].split("</p>")[0]
    assert result.startswith("Verified:") and "carries 2 of the 2 required witness cosignatures" in result
    assert "the current tree extends it" in result


def test_a_forged_cosignature_fails_the_verify_button(witnessed: ConsoleHub) -> None:
    """Check for forged cosignatures: a newer checkpoint stored as final with the witnesses' lines copied
    from the genuine final checkpoint (signatures over another tree); the page marks them and the verify
    button refuses (quorum 2 is not met)."""
    log = witnessed.hub.services.audit.log
    genuine = parse_note(log.latest_final_checkpoint() or "")
    copied = [s for s in genuine.signatures if not log.verifier.matches(s)]
    assert len(copied) == 2
    newer = log.publish_checkpoint(witnessed.hub.services.clock.now())
    log.save_final_checkpoint(add_signatures(newer, copied))  # the log's own signature is real
    client = witnessed.login("security-admin")
    page = client.get("/console/audit").text
    table = page.split('id="cosignatures"')[1].split("</table>")[0]
    assert ">verified<" not in table and table.count(">does not verify<") == 2
    r = client.post("/console/audit/verify", data={"csrf": witnessed.csrf(client, "/console/audit")})
    assert r.status_code == 409
    assert r.text.split('id="verify-result">')[1].startswith("Not verified:")


def test_without_a_final_checkpoint_the_page_says_so(tmp_path: Path) -> None:
    parts = make_hub(tmp_path)
    try:
        page = ConsoleHub(parts).login("security-admin").get("/console/audit").text
        assert "No checkpoint is final yet" in page and 'id="cosignatures"' not in page
    finally:
        parts.store.engine.dispose()
