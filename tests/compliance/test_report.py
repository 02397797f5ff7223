"""The compliance report: catalogue coverage, verdicts from live hub state, evidence that verifies offline."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from iotguard.audit.verify import InclusionBundle, verify_inclusion_bundle
from iotguard.cli.main import main
from iotguard.compliance import CHECKS, STANDARDS, FleetFacts, Status, evaluate
from iotguard.hub.compliance import render_html, report
from iotguard.hub.schema import devices
from tests.hub.conftest import HubParts, make_hub

FACTS = FleetFacts(
    generated_at=datetime(2026, 11, 30, tzinfo=UTC), devices_by_status={"active": 2}, shared_identity_keys=0,
    active_without_certificate=0, active_trust_tiers={"verified": 2}, security_contact="security@example.org",
    unsafe_plain_http=False, unsafe_plaintext_broker=False, api_docs=False, keystore_backend="pkcs11",
    allowed_suites=("ascon-aead128",), cert_validity_days=30, enrollment_token_ttl_s=86400, models=("thermo-1",),
    models_without_contract=(), models_without_support_date=(), firmware_repository=True, policy_active=True,
    outbox_pending=0, audit_size=10, checkpoint_verified=True, rejected_total={})


def _checks(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["id"]: c for c in doc["checks"]}  # type: ignore[attr-defined, index]


def test_catalogue_covers_the_three_standards_and_names_only_known_checks() -> None:
    known = {c.id for c in CHECKS}
    etsi = [r.id for r in STANDARDS["ETSI EN 303 645 V2.1.1"]]
    assert etsi == [f"5.{i}" for i in range(1, 14)] + ["6"]
    assert [r.id for r in STANDARDS["OWASP IoT Top 10 (2018)"]] == [f"I{i}" for i in range(1, 11)]
    assert len(STANDARDS["NIST IR 8259A"]) == 6
    assert all(set(r.checks) <= known for reqs in STANDARDS.values() for r in reqs)
    assert all(c.remediation or c.id in ("C-DELETION", "C-INPUT-VALIDATION") for c in CHECKS)


def test_a_healthy_fleet_passes_and_each_failure_rolls_up_to_its_provisions() -> None:
    doc = evaluate(FACTS)
    assert doc["summary"] == {"pass": len(CHECKS), "fail": 0, "not_applicable": 0}
    cloned = evaluate(replace(FACTS, shared_identity_keys=1))
    assert _checks(cloned)["C-NO-DEFAULT-CREDS"]["status"] == "fail"
    assert _checks(cloned)["C-NO-DEFAULT-CREDS"]["remediation"]
    etsi = {r["id"]: r["status"] for r in cloned["standards"]["ETSI EN 303 645 V2.1.1"]}
    owasp = {r["id"]: r["status"] for r in cloned["standards"]["OWASP IoT Top 10 (2018)"]}
    assert etsi["5.1"] == etsi["5.12"] == "fail" and etsi["5.2"] == "pass"
    assert owasp["I1"] == owasp["I9"] == "fail"
    empty = evaluate(replace(FACTS, devices_by_status={}, models=(), active_trust_tiers={}))
    assert _checks(empty)["C-ATTESTATION"]["status"] == Status.NOT_APPLICABLE.value


@pytest.fixture
def fleet(tmp_path: Path) -> HubParts:
    hub = make_hub(tmp_path)
    hub.agent("dev-1")
    hub.agent("dev-2")
    hub.services.posture.quarantine("dev-2", actor="olga", reason="test")
    hub.deliver()
    return hub


def test_report_judges_the_live_hub_and_its_evidence_verifies_offline(fleet: HubParts) -> None:
    doc = report(fleet.services)
    checks = _checks(doc)
    assert checks["C-NO-DEFAULT-CREDS"]["status"] == "pass"
    assert checks["C-VULN-DISCLOSURE"]["status"] == "fail"  # hub.security_contact is empty by default
    assert checks["C-KEY-STORAGE"]["status"] == "fail"  # the software key store
    assert checks["C-ATTESTATION"]["status"] == "fail"  # nobody attested yet
    assert checks["C-ENCRYPTED-COMMS"]["status"] == "pass"
    cited = [e for e in checks["C-NO-DEFAULT-CREDS"]["evidence"] if e["kind"] == "audit"]  # type: ignore[union-attr]
    assert len(cited) == 2
    for e in cited:
        event = verify_inclusion_bundle(InclusionBundle.from_dict(e["proof"]), fleet.services.audit.log.verifier)
        assert event.type == "device.enrolled" and event.subject in ("dev-1", "dev-2")
    quarantine = [e for e in checks["C-AUDIT-LOG"]["evidence"] if e["kind"] == "audit"]  # type: ignore[union-attr]
    assert any("device.quarantined" in e["summary"] for e in quarantine)
    assert doc["checkpoint"] and doc["fleet"]["devices"] == {"active": 2}


def test_cloned_identity_key_fails_the_default_credentials_check(fleet: HubParts) -> None:
    """Check for a cloned device: two registry entries holding one identity key fail ETSI 5.1 / OWASP I1."""
    key = fleet.registry.device("dev-1").identity_public_key
    with fleet.store.engine.begin() as c:
        c.execute(update(devices).where(devices.c.device_id == "dev-2").values(identity_public_key=key))
    doc = report(fleet.services)
    assert _checks(doc)["C-NO-DEFAULT-CREDS"]["status"] == "fail"
    assert {r["id"]: r["status"] for r in doc["standards"]["ETSI EN 303 645 V2.1.1"]}["5.1"] == "fail"


def test_settings_change_the_verdicts(tmp_path: Path) -> None:
    hub = make_hub(tmp_path, api_docs=True, security_contact="https://example.org/.well-known/security.txt")
    doc = report(hub.services)
    assert _checks(doc)["C-MINIMAL-SURFACE"]["status"] == "fail"
    assert _checks(doc)["C-VULN-DISCLOSURE"]["status"] == "pass"
    hub.store.engine.dispose()


def test_an_unsafe_setting_fails_its_check_and_names_the_setting(tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text("0")
    hub = make_hub(tmp_path, unsafe_clock_offset_file=str(offset))
    check = _checks(report(hub.services))["C-NO-UNSAFE-OPTIONS"]
    assert check["status"] == "fail" and "hub.unsafe_clock_offset_file" in check["reason"]
    hub.store.engine.dispose()
    assert _checks(evaluate(FACTS))["C-NO-UNSAFE-OPTIONS"]["status"] == "pass"


def test_html_report_links_every_check_to_its_evidence(fleet: HubParts) -> None:
    html = render_html(report(fleet.services))
    for check in CHECKS:
        assert f'id="{check.id}"' in html and f'href="#{check.id}"' in html
    assert 'href="#entry-' in html and "<script" not in html


def test_cli_writes_json_and_html(fleet: HubParts, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{fleet.cfg.data_dir}"\n')
    assert main(["compliance", "--config", str(conf), "report", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "iotguard-compliance-report/v1" and doc["fleet"]["devices"]["active"] == 2
    out = tmp_path / "report.html"
    assert main(["compliance", "--config", str(conf), "report", "--format", "html", "-o", str(out)]) == 0
    assert "<h2>ETSI EN 303 645 V2.1.1</h2>" in out.read_text()


def _pdf_links(reader: Any) -> tuple[set[str], set[str]]:
    """The PDF's named destinations and the destinations its internal link annotations go to."""
    from pypdf.generic import ArrayObject, NameObject, TextStringObject

    destinations = set(reader.named_destinations)
    targets: set[str] = set()
    for page in reader.pages:
        for ref in page.get("/Annots") or []:
            annot = ref.get_object()
            if annot.get("/Subtype") != "/Link":
                continue
            dest = annot.get("/Dest")
            action = annot.get("/A")
            if dest is None and action is not None and action.get("/S") == "/GoTo":
                dest = action.get("/D")
            if isinstance(dest, (TextStringObject, NameObject, str)):
                targets.add(str(dest).lstrip("/"))
            elif isinstance(dest, ArrayObject):
                targets.add("<explicit>")
    return destinations, targets


def test_pdf_report_carries_every_check_and_links_each_to_its_evidence(fleet: HubParts) -> None:
    from pypdf import PdfReader

    from iotguard.hub.compliance import render_pdf

    doc = report(fleet.services)
    pdf = render_pdf(doc)
    assert pdf.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(pdf))
    text = " ".join((page.extract_text() or "") for page in reader.pages)
    flat = " ".join(text.split())
    destinations, targets = _pdf_links(reader)
    for check in doc["checks"]:
        assert check["id"] in flat, check["id"]
        assert check["id"] in destinations and check["id"] in targets, check["id"]  # requirement -> check link
        for e in check["evidence"]:
            if e["kind"] == "audit":  # check -> the cited entry's inclusion proof, inside the PDF
                assert f"entry-{e['ref']}" in destinations and f"entry-{e['ref']}" in targets, e["ref"]
    cited = [e for c in doc["checks"] for e in c["evidence"] if e["kind"] == "audit"]
    assert cited and all(e["proof"]["leaf_hash"][:16] in flat.replace(" ", "") for e in cited[:3])


def test_cli_writes_pdf(fleet: HubParts, tmp_path: Path) -> None:
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{fleet.cfg.data_dir}"\n')
    out = tmp_path / "report.pdf"
    assert main(["compliance", "--config", str(conf), "report", "--format", "pdf", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(b"%PDF-") and out.stat().st_size > 10_000


def _doc_with_evidence(summary: str) -> dict[str, Any]:
    """A judged report (no hub) whose first check cites one setting and one audit entry with ``summary``."""
    doc = evaluate(FACTS)
    first = doc["checks"][0]
    first["evidence"] = [
        {"kind": "config", "ref": "hub.api_docs", "summary": "hub.api_docs = False"},
        {"kind": "audit", "ref": "7", "summary": summary,
         "proof": {"index": 7, "leaf_hash": base64.b64encode(hashlib.sha256(b"entry 7").digest()).decode(),
                   "proof": []}},
    ]
    doc["checkpoint"], doc["log_origin"] = "iotguard.local/audit\n10\nroot\n", "iotguard.local/audit"
    return doc


def test_pdf_sections_carry_verdict_provisions_remediation_and_setting_links() -> None:
    from pypdf import PdfReader

    from iotguard.hub.compliance import render_pdf

    doc = _doc_with_evidence("device.enrolled by dev-1 about dev-1")
    failing = evaluate(replace(FACTS, shared_identity_keys=1))
    doc["checks"][0].update(status="fail", remediation=_checks(failing)["C-NO-DEFAULT-CREDS"]["remediation"])
    reader = PdfReader(io.BytesIO(render_pdf(doc)))
    flat = " ".join(" ".join((p.extract_text() or "") for p in reader.pages).split())
    assert f"{doc['checks'][0]['id']} — {doc['checks'][0]['title']}: fail" in flat
    assert "Provisions: ETSI EN 303 645 V2.1.1 5.1, 5.12" in flat
    assert "Remediation: " + " ".join(str(doc["checks"][0]["remediation"]).split()) in flat
    destinations, targets = _pdf_links(reader)
    assert "setting-hub.api_docs" in destinations and "setting-hub.api_docs" in targets
    assert "<explicit>" not in targets  # every internal link names its target


def test_pdf_of_one_document_is_byte_identical() -> None:
    from iotguard.hub.compliance import render_pdf

    doc = _doc_with_evidence("device.enrolled by dev-1 about dev-1")
    assert render_pdf(doc) == render_pdf(doc)


def test_markup_in_an_audit_summary_is_printed_not_followed() -> None:
    """Check for markup injection: an actor or subject name holding ReportLab markup (a URI link, an image
    read from disk) is printed as text; the PDF gains no URI action and reads no file."""
    from pypdf import PdfReader

    from iotguard.hub.compliance import render_pdf

    hostile = 'dev-1 <a href="https://evil.example/">x</a> <img src="/etc/passwd"/> &amp;'
    reader = PdfReader(io.BytesIO(render_pdf(_doc_with_evidence(f"device.enrolled by {hostile}"))))
    text = " ".join((p.extract_text() or "") for p in reader.pages)
    assert hostile in " ".join(text.split())
    for page in reader.pages:
        assert "/XObject" not in (page.get("/Resources") or {})
        for ref in page.get("/Annots") or []:
            assert "/A" not in ref.get_object()  # internal links carry /Dest only; no URI or launch action


def test_a_link_to_a_check_that_is_not_in_the_report_is_an_error_not_a_dead_link() -> None:
    from iotguard.hub.compliance import render_pdf

    doc = _doc_with_evidence("device.enrolled by dev-1 about dev-1")
    next(iter(doc["standards"].values()))[0]["checks"].append("C-NOT-IN-THIS-REPORT")
    with pytest.raises(ValueError, match="C-NOT-IN-THIS-REPORT"):
        render_pdf(doc)
