"""The console over the in-process hub (HTTPS test client): sessions, CSRF, CSP, Cedar per page, the pages' effects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iotguard.audit import AuditEvent
from iotguard.detection import Alert, Severity
from iotguard.hub.console import CONTENT_SECURITY_POLICY
from tests.attestation.conftest import Firmware
from tests.hub.console.conftest import LOGIN_CSRF, ConsoleHub, attest

PAGES = ["/console/fleet", "/console/devices/dev-1", "/console/alerts", "/console/audit", "/console/privacy",
         "/console/live", "/console/rollouts"]


def _audit_types(console: ConsoleHub) -> list[str]:
    console.hub.deliver()
    log = console.hub.services.audit.log
    return [AuditEvent.from_cbor(e).type for e in log.entries(0, log.size())]


def test_login_trades_the_token_for_a_strict_session_cookie(console: ConsoleHub) -> None:
    client = console.browser()
    form = client.get("/console/login")
    assert form.status_code == 200 and 'type="password"' in form.text
    login_cookie = form.headers["set-cookie"].lower()
    assert "httponly" in login_cookie and "secure" in login_cookie and "samesite=strict" in login_cookie
    token = console.token("viewer")
    r = client.post("/console/login", data={"token": token, "login_csrf": LOGIN_CSRF.search(form.text).group(1),
                                            "next": "/console/alerts"})  # type: ignore[union-attr]
    assert r.status_code == 303 and r.headers["location"] == "/console/alerts"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("iotguard_console="))
    attrs = {a.strip().lower() for a in cookie.split(";")}
    assert {"httponly", "secure", "samesite=strict", "path=/console"} <= attrs
    assert token not in cookie  # the browser holds a session secret, never the API token
    assert client.get("/console/alerts").status_code == 200


def test_login_csrf_and_open_redirect_are_refused(console: ConsoleHub) -> None:
    """Check for login CSRF: a form posted from another site lacks the double-submit token."""
    client = console.browser()
    r = client.post("/console/login", data={"token": console.token("viewer")})
    assert r.status_code == 400 and "iotguard_console=" not in r.headers.get("set-cookie", "")
    form = client.get("/console/login")
    r = client.post("/console/login", data={"token": console.token("viewer"), "next": "//evil.example/",
                                            "login_csrf": LOGIN_CSRF.search(form.text).group(1)})  # type: ignore[union-attr]
    assert r.status_code == 303 and r.headers["location"] == "/console/fleet"


def test_bad_token_shows_the_login_page_and_is_audited(console: ConsoleHub) -> None:
    client = console.browser()
    form = client.get("/console/login")
    r = client.post("/console/login", data={"token": "igt_0000000000000000_guess",
                                            "login_csrf": LOGIN_CSRF.search(form.text).group(1)})  # type: ignore[union-attr]
    assert r.status_code == 401 and 'type="password"' in r.text
    assert "auth.failed" in _audit_types(console)


def test_every_page_carries_a_strict_csp_and_no_inline_script_or_style(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    admin, officer = console.login("security-admin"), console.login("privacy-officer")
    for page in [*PAGES, "/console/login", "/console/privacy?subject=alice"]:
        r = (officer if page.startswith("/console/privacy") else admin).get(page)
        assert r.status_code == 200, page
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), page
        assert " style=" not in r.text and "<style" not in r.text, page
        assert "onclick" not in r.text.lower() and "javascript:" not in r.text.lower(), page
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY


def test_anonymous_visitor_gets_the_login_page_not_data(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    client = console.browser()
    for page in PAGES:
        r = client.get(page)
        assert r.status_code == 401, page
        assert "dev-1" not in r.text.replace('value="/console/devices/dev-1"', ""), page


def test_cross_site_quarantine_without_csrf_token_is_refused(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    client = console.login("operator")
    r = client.post("/console/devices/dev-1/quarantine", data={"reason": "forged"})
    assert r.status_code == 400
    r = client.post("/console/devices/dev-1/quarantine", data={"reason": "forged", "csrf": "x" * 43})
    assert r.status_code == 400
    assert console.hub.services.posture.posture.require("dev-1").quarantined is False


def test_csrf_token_of_another_session_is_refused(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    victim, attacker = console.login("operator"), console.login("operator")
    stolen = console.csrf(attacker, "/console/devices/dev-1")
    r = victim.post("/console/devices/dev-1/quarantine", data={"csrf": stolen})
    assert r.status_code == 400
    assert console.hub.services.posture.posture.require("dev-1").quarantined is False


def test_viewer_gets_403_pages_and_changes_nothing(console: ConsoleHub) -> None:
    """Check for privilege escalation through the console: each page asks Cedar like the API route."""
    console.hub.agent("dev-1")
    client = console.login("viewer")
    assert client.get("/console/fleet").status_code == 200
    for page in ("/console/audit", "/console/privacy"):
        r = client.get(page)
        assert r.status_code == 403 and "403" in r.text and "not allowed" in r.text, page
        assert "checkpoint" not in r.text.lower()
    csrf = console.csrf(client, "/console/devices/dev-1")
    r = client.post("/console/devices/dev-1/quarantine", data={"csrf": csrf})
    assert r.status_code == 403 and "viewer" in r.text
    assert console.hub.services.posture.posture.require("dev-1").quarantined is False


def test_revoking_the_api_token_ends_its_console_session(console: ConsoleHub) -> None:
    client = console.login("viewer")
    assert client.get("/console/fleet").status_code == 200
    token_id = next(t["token_id"] for t in console.hub.store.list_api_tokens() if t["name"] == "console-viewer")
    console.hub.store.revoke_api_token(token_id, now=console.hub.services.clock.now())
    assert client.get("/console/fleet").status_code == 401


def test_logout_ends_the_session_everywhere(console: ConsoleHub) -> None:
    client = console.login("viewer")
    stolen = client.cookies.get("iotguard_console")
    csrf = console.csrf(client, "/console/fleet")
    assert client.post("/console/logout", data={"csrf": csrf}).status_code == 303
    replay = console.browser()
    replay.cookies.set("iotguard_console", stolen or "", domain="testserver", path="/console")
    assert replay.get("/console/fleet").status_code == 401


def test_fleet_filters_and_pages_in_the_store(console: ConsoleHub) -> None:
    for i in range(3):
        console.hub.agent(f"dev-{i}")
    for i in range(12):
        console.hub.registry.add_device(f"spare-{i:02d}", "thermo-1")
    console.hub.services.posture.quarantine("dev-1", actor="t", reason="t")
    client = console.login("viewer")
    page = client.get("/console/fleet", params={"status": "pending", "size": 5}).text
    for _ in range(2):  # follow the Next links (keyset cursors) to the third page
        link = re.search(r'<a rel="next" href="([^"]+)"', page)
        assert link, page
        page = client.get(link.group(1).replace("&amp;", "&")).text
    assert "12 devices match; showing 11\u201312." in page and "spare-10" in page and "spare-09" not in page
    assert 'rel="next"' not in page and 'rel="prev"' in page
    page = client.get("/console/fleet", params={"quarantined": "yes"}).text
    assert "1 device match;" in page and 'href="/console/devices/dev-1"' in page
    page = client.get("/console/fleet", params={"q": "dev-2"}).text
    assert "1 device match;" in page and "dev-2" in page
    assert client.get("/console/fleet", params={"tier": "root"}).status_code == 400
    assert client.get("/console/fleet", params={"size": 100000}).status_code == 400


def test_quarantine_and_release_from_the_device_page(console: ConsoleHub, tmp_path: Path,
                                                    firmware: Firmware) -> None:
    agent = console.hub.agent("dev-1")
    attest(console.hub, agent, tmp_path, firmware)
    operator, admin = console.login("operator"), console.login("security-admin")
    r = operator.post("/console/devices/dev-1/quarantine",
                      data={"csrf": console.csrf(operator, "/console/devices/dev-1"), "reason": "scan"})
    assert r.status_code == 303
    assert console.hub.services.posture.posture.require("dev-1").quarantined is True
    assert console.hub.services.outbox.pending() == 0  # delivered before the response, as the API does
    page = operator.get(r.headers["location"]).text
    assert 'id="quarantined">yes<' in page and "Release from quarantine" in page
    r = operator.post("/console/devices/dev-1/release", data={"csrf": console.csrf(operator, "/console/devices/dev-1")})
    assert r.status_code == 403  # an operator may quarantine but not release
    r = admin.post("/console/devices/dev-1/release", data={"csrf": console.csrf(admin, "/console/devices/dev-1")})
    assert r.status_code == 303
    assert console.hub.services.posture.posture.require("dev-1").quarantined is False
    types = _audit_types(console)
    assert "device.quarantined" in types and "device.released" in types
    page = admin.get("/console/devices/dev-1").text
    history = page[page.index('id="posture-history"'):page.index('id="h-attest"')]
    changes = re.findall(r"<td>(device\.\w+|attestation\.result)</td>", history)
    # newest first: the release, the quarantine, then the affirming appraisal that came before them
    assert changes[:3] == ["device.released", "device.quarantined", "attestation.result"], changes
    assert "trust_tier: verified" in history


def test_release_without_fresh_attestation_is_denied_on_the_page(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    console.hub.services.posture.quarantine("dev-1", actor="t", reason="t")
    admin = console.login("security-admin")
    r = admin.post("/console/devices/dev-1/release", data={"csrf": console.csrf(admin, "/console/devices/dev-1")})
    assert r.status_code == 403
    assert console.hub.services.posture.posture.require("dev-1").quarantined is True


def test_approving_a_playbook_action_needs_the_actions_own_permission(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    alert = Alert.create("dev-1", "scan_fanout", 42.0, Severity.HIGH, (1_767_225_600.0, 1_767_225_615.0),
                         {"new_destinations": 42})
    actions = console.hub.services.detection.raise_alerts([alert])
    revoke = next(a for a in actions if a.kind == "revoke")
    operator, admin = console.login("operator"), console.login("security-admin")
    page = operator.get("/console/alerts").text
    assert f'id="approve-{revoke.id}"' in page
    r = operator.post(f"/console/actions/{revoke.id}/approve", data={"csrf": console.csrf(operator, "/console/alerts")})
    assert r.status_code == 403
    assert console.hub.registry.device("dev-1").status == "active"
    r = admin.post(f"/console/actions/{revoke.id}/approve", data={"csrf": console.csrf(admin, "/console/alerts")})
    assert r.status_code == 303
    assert console.hub.registry.device("dev-1").status == "revoked"
    assert f'id="approve-{revoke.id}"' not in admin.get("/console/alerts").text


def test_audit_verify_button_checks_the_whole_log_against_a_signed_checkpoint(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    admin = console.login("security-admin")
    console.hub.deliver()
    r = admin.post("/console/audit/verify", data={"csrf": console.csrf(admin, "/console/audit")})
    assert r.status_code == 200 and 'id="verify-result"' in r.text and "Verified:" in r.text
    size = console.hub.services.audit.log.size()
    assert f"tree size {size}" in r.text
    trail = admin.get("/console/devices/dev-1").text
    assert "verified</span>" in trail  # dev-1's entries carry checked inclusion proofs


def test_audit_verify_reports_a_tampered_log(console: ConsoleHub) -> None:
    """Check for a rewritten history: an entry changed in the database fails the verify button."""
    from sqlalchemy import text

    console.hub.agent("dev-1")
    admin = console.login("security-admin")
    console.hub.deliver()
    assert "Verified:" in admin.post("/console/audit/verify",
                                     data={"csrf": console.csrf(admin, "/console/audit")}).text
    with console.hub.store.engine.begin() as c:
        c.execute(text("UPDATE audit_entries SET data = :d WHERE seq = 0"), {"d": b"\xa0"})
    r = admin.post("/console/audit/verify", data={"csrf": console.csrf(admin, "/console/audit")})
    assert r.status_code == 409 and "Not verified" in r.text


def test_owner_portal_withdraws_consent_downloads_and_cannot_reach_operator_pages(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    console.hub.services.consent.record_initial_consent("alice", "dev-1", {"research": True})
    owner, status = console.owner_login(console.owner_code("alice"))
    assert status == 303
    home = owner.get("/console/owner").text
    assert "Withdraw consent for research" in home and "How long:" in home
    csrf = console.csrf(owner, "/console/owner")
    r = owner.post("/console/owner/consent", data={"csrf": csrf, "purpose": "research", "decision": "withdraw"})
    assert r.status_code == 303
    state = console.hub.services.consent.privacy.consent_state("alice")
    assert state.decisions["research"].granted is False
    assert "consent.changed" in _audit_types(console) or any("consent" in t for t in _audit_types(console))
    export = owner.get("/console/owner/export")
    assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
    assert "dev-1" in export.text
    for page in ("/console/fleet", "/console/audit", "/console/devices/dev-1"):
        assert owner.get(page).status_code == 403, page
    r = owner.post("/console/owner/consent", data={"csrf": csrf, "purpose": "../../etc", "decision": "grant"})
    assert r.status_code == 400


def test_operator_session_cannot_use_the_owner_portal(console: ConsoleHub) -> None:
    admin = console.login("security-admin")
    assert admin.get("/console/owner").status_code == 403


@pytest.mark.parametrize("secret", ["", "igo_" + "A" * 43, "x" * 500])
def test_unknown_or_oversized_owner_codes_are_refused(console: ConsoleHub, secret: str) -> None:
    owner = console.browser()
    form = owner.get("/console/owner/login")
    login_csrf = LOGIN_CSRF.search(form.text).group(1)  # type: ignore[union-attr]
    r = owner.post("/console/owner/login", data={"token": secret, "login_csrf": login_csrf})
    cookies = [c for c in r.headers.get_list("set-cookie") if c.startswith("iotguard_console=")]
    assert r.status_code == 401 and all("Max-Age=0" in c or 'iotguard_console=""' in c for c in cookies)


def test_oversized_form_is_refused(console: ConsoleHub) -> None:
    client = console.login("viewer")
    r = client.post("/console/logout", content=b"csrf=" + b"a" * 20000,
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400


def test_owner_erases_their_data_and_their_access_code_stops_working(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    console.hub.services.consent.record_initial_consent("bob", "dev-1", {"research": True})
    code = console.owner_code("bob")
    owner, status = console.owner_login(code)
    assert status == 303
    csrf = console.csrf(owner, "/console/owner")
    assert owner.post("/console/owner/erase", data={"csrf": csrf}).status_code == 400  # not confirmed
    r = owner.post("/console/owner/erase", data={"csrf": csrf, "confirm": "yes"})
    assert r.status_code == 200 and "Your data was erased" in r.text
    assert "data.erased" in _audit_types(console)
    # The erasure record is kept under the subject's pseudonym only (docs/privacy.md); the subject is gone.
    assert console.hub.services.consent.privacy.devices_of("bob") == []
    assert owner.get("/console/owner").status_code == 401  # the session ended with the erasure
    assert console.owner_login(code)[1] == 401  # the code was revoked


def test_policy_page_shows_the_active_policy_diffs_versions_and_explains(console: ConsoleHub) -> None:
    from iotguard.policy import PolicySet, default_policy_set

    console.hub.agent("dev-1")
    admin = console.hub.services.posture.admin
    first = admin.repository.active_version()
    assert first is not None
    text = default_policy_set().text + '\n@id("no-viewer-telemetry")\nforbid (principal in Role::"viewer", ' \
                                       'action == Action::"read_telemetry", resource);\n'
    engine = console.hub.services.posture.engine
    admin.propose_and_activate(PolicySet(text), author="sam", comment="tighten", engine=engine)
    client = console.login("security-admin")
    page = client.get("/console/policy", params={"old": first.version, "new": first.version + 1})
    assert page.status_code == 200 and "no-viewer-telemetry" in page.text
    assert f'id="active-version">{first.version + 1}<' in page.text
    r = client.get("/console/policy/explain", params={
        "principal_type": "Operator", "principal_id": "vera", "role": "viewer", "action": "read_telemetry",
        "resource_type": "Device", "resource_id": "dev-1"})
    assert r.status_code == 200 and "DENY (forbidden)" in r.text and "no-viewer-telemetry" in r.text
    assert client.get("/console/policy", params={"old": 1, "new": 99}).status_code == 400
    assert console.login("operator").get("/console/policy").status_code == 403


def test_cli_issues_an_owner_code_that_logs_in_and_revokes_it(console: ConsoleHub, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from iotguard.cli.main import main

    console.hub.agent("dev-1")
    console.hub.services.consent.record_initial_consent("carol", "dev-1", {"research": True})
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{console.hub.cfg.data_dir}"\n')
    capsys.readouterr()
    assert main(["console", "--config", str(conf), "owner-code", "carol", "--actor", "pia"]) == 0
    code = capsys.readouterr().out.strip()
    assert code.startswith("igo_")
    owner, status = console.owner_login(code)
    assert status == 303
    assert "Withdraw consent for research" in owner.get("/console/owner").text
    assert "console.owner_token_issued" in _audit_types(console)
    assert main(["console", "--config", str(conf), "owner-revoke", "carol"]) == 0
    assert owner.get("/console/owner").status_code == 401


def test_privacy_page_shows_receipts_and_privacy_loss_of_a_subject(console: ConsoleHub) -> None:
    from iotguard.hub.ingest import Incoming
    from iotguard.privacy import ConsentState
    from iotguard.wire import encode_reading

    agent = console.hub.agent("dev-1")
    now = console.hub.services.clock.now()
    agent.attach_privacy("thermo-1", ConsentState("alice").grant("research", now))
    console.hub.services.consent.record_initial_consent("alice", "dev-1", {"research": True})
    for reading in agent.privacy.process({"temperature": 21.5, "humidity": 40.0}):  # type: ignore[union-attr]
        _s, envelope = agent.sealer.seal(encode_reading(reading))
        console.hub.processor.process([Incoming(agent.sealer.topic, envelope)])
    receipt = agent.privacy.seal_receipt(now)  # type: ignore[union-attr]
    assert console.hub.client.post("/v1/receipts", json=agent._signed("upload_receipt",
                                                                      {"receipt": receipt})[0]).status_code == 200
    page = console.login("privacy-officer").get("/console/privacy", params={"subject": "alice"}).text
    assert "1 signed receipt from" in page
    assert 'id="contract-thermo-1"' in page and "research (consent, kept 365 days)" in page
    ledger = page.split('id="privacy-loss"')[1].split("</table>")[0]
    assert "dev-1" in ledger  # the receipt's privacy loss was charged to the device's budget period
