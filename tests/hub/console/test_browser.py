"""The console in a real headless browser: Debian's Chromium driven by Playwright, against the hub's API
served over HTTPS (TLS 1.3, the hub's own certificate) in this process.

Each flow is checked twice: on the page the browser shows, and in the hub's resulting state. The tests
skip only outside CI when Chromium or Playwright is missing; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotguard.detection import Alert, Severity
from tests.attestation.conftest import Firmware
from tests.hub.console.conftest import HttpsHub, attest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = "playwright is not installed" if sync_playwright is None else \
        f"{CHROMIUM} is missing (apt-get install chromium)" if not Path(CHROMIUM).exists() else ""
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run under CI: {missing}")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _playwright()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _context(browser: Any, **kwargs: Any) -> Any:
    # The hub's certificate is issued by its own fleet CA, which this throwaway browser profile does not trust.
    return browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800}, **kwargs)


def _login(browser: Any, hub: HttpsHub, role: str) -> Any:
    page = _context(browser).new_page()
    page.goto(hub.url + "/console/login")
    page.fill("#token", hub.hub.store.create_api_token(f"browser-{role}", role,
                                                       now=hub.hub.services.clock.now()))
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def test_login_filter_open_device_quarantine_and_release(browser: Any, https_hub: HttpsHub, tmp_path: Path,
                                                         firmware: Firmware) -> None:
    hub = https_hub.hub
    for i in range(3):
        hub.agent(f"dev-{i}")
    for i in range(60):
        hub.registry.add_device(f"spare-{i:02d}", "thermo-1")
    attest(hub, hub.agent("dev-9"), tmp_path, firmware)
    page = _login(browser, https_hub, "security-admin")
    assert page.url.endswith("/console/fleet")
    assert page.locator("#result-count").inner_text().startswith("64 devices match; showing 1\u201350.")
    cookie = next(c for c in page.context.cookies() if c["name"] == "iotguard_console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

    page.fill("input[name=q]", "dev-9")
    page.select_option("select[name=status]", "active")
    page.click("form.filters button[type=submit]")
    assert page.locator("#result-count").inner_text().startswith("1 device match;")
    assert "status=active" in page.url

    page.click("a[href='/console/devices/dev-9']")
    assert page.locator("#device-id").inner_text() == "dev-9"
    assert page.locator("#trust-tier").inner_text() == "verified"
    page.fill("form[action$='/quarantine'] input[name=reason]", "browser test")
    page.click("#quarantine")
    assert page.locator("#notice").inner_text() == "Done: quarantined."
    assert page.locator("#quarantined").inner_text() == "yes"
    assert hub.services.posture.posture.require("dev-9").quarantined is True

    page.click("#release")
    assert page.locator("#notice").inner_text() == "Done: released."
    assert page.locator("#quarantined").inner_text() == "no"
    assert hub.services.posture.posture.require("dev-9").quarantined is False
    page.context.close()


def test_approve_a_playbook_action(browser: Any, https_hub: HttpsHub) -> None:
    hub = https_hub.hub
    hub.agent("dev-2")
    alert = Alert.create("dev-2", "scan_fanout", 42.0, Severity.HIGH, (1_767_225_600.0, 1_767_225_615.0),
                         {"new_destinations": 42})
    revoke = next(a for a in hub.services.detection.raise_alerts([alert]) if a.kind == "revoke")
    page = _login(browser, https_hub, "security-admin")
    page.click("a[href='/console/alerts']")
    assert page.locator("#waiting").inner_text().count("revoke") >= 1
    page.click(f"#approve-{revoke.id}")
    assert page.locator("#notice").inner_text() == f"Done: approved-{revoke.id}."
    assert page.locator(f"#approve-{revoke.id}").count() == 0
    assert hub.registry.device("dev-2").status == "revoked"
    page.context.close()


def test_verify_the_audit_log(browser: Any, https_hub: HttpsHub) -> None:
    hub = https_hub.hub
    hub.agent("dev-1")
    hub.deliver()
    page = _login(browser, https_hub, "security-admin")
    page.click("a[href='/console/audit']")
    page.click("#verify")
    result = page.locator("#verify-result").inner_text()
    size = hub.services.audit.log.size()
    assert result.startswith("Verified:") and f"tree size {size}" in result
    checkpoint = hub.services.audit.log.latest_checkpoint()
    assert checkpoint is not None and hub.services.audit.log.verify_checkpoint(checkpoint).size == size
    assert page.locator("#checkpoint").inner_text().strip() == checkpoint.strip()
    page.context.close()


def test_device_owner_withdraws_consent(browser: Any, https_hub: HttpsHub) -> None:
    hub = https_hub.hub
    hub.agent("dev-1")
    hub.services.consent.record_initial_consent("alice", "dev-1", {"research": True})
    officer = _login(browser, https_hub, "privacy-officer")
    officer.click("a[href='/console/privacy']")
    officer.fill("input[name=subject]", "alice")
    officer.press("input[name=subject]", "Enter")
    officer.click("text=Issue an owner-portal access code")
    code = officer.locator("#owner-code").inner_text().strip()
    officer.context.close()

    owner = _context(browser).new_page()
    owner.goto(https_hub.url + "/console/owner/login")
    owner.fill("#token", code)
    owner.click("button[type=submit]")
    purpose = owner.locator("#purpose-dev-1-research")
    assert "kept 365.0 days" in purpose.inner_text()
    assert purpose.locator(".consent-state").inner_text() == "granted"
    purpose.locator("button").click()
    assert owner.locator("#notice").inner_text() == "Saved: withdraw-research."
    assert owner.locator("#purpose-dev-1-research .consent-state").inner_text() == "withdrawn"
    assert hub.services.consent.privacy.consent_state("alice").decisions["research"].granted is False
    response = owner.goto(https_hub.url + "/console/fleet")
    assert response.status == 403  # an owner's session is no operator's
    owner.context.close()


def test_unauthorised_role_sees_403_pages_not_data(browser: Any, https_hub: HttpsHub) -> None:
    https_hub.hub.agent("dev-1")
    https_hub.hub.deliver()
    page = _login(browser, https_hub, "viewer")
    response = page.goto(https_hub.url + "/console/audit")
    assert response.status == 403
    assert page.locator("h1").inner_text() == "403 — not allowed"
    assert page.locator("#checkpoint").count() == 0 and "device.enrolled" not in page.content()
    anonymous = _context(browser).new_page()
    response = anonymous.goto(https_hub.url + "/console/devices/dev-1")
    assert response.status == 401 and anonymous.locator("#token").count() == 1
    page.context.close()
    anonymous.context.close()


def test_keyboard_no_javascript_and_no_csp_violation(browser: Any, https_hub: HttpsHub) -> None:
    https_hub.hub.agent("dev-1")
    page = _context(browser).new_page()
    page.goto(https_hub.url + "/console/login")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert order[:3] == ["A", "token", "BUTTON"]  # brand link, the token field, the login button
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.type("igt_wrong_token")
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.press("Enter")
    page.locator("p.error").wait_for(timeout=10_000)  # the form works from the keyboard alone
    page.context.close()

    violations: list[str] = []
    page = _login(browser, https_hub, "viewer")
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(https_hub.url + "/console/live")
    page.wait_for_selector("#rates-chart canvas", timeout=10_000)  # the vendored chart drew from /live/rates
    with page.expect_response(lambda r: r.url.endswith("/console/live/table"), timeout=10_000) as refreshed:
        pass  # the vendored htmx polls the counters table every 5 s
    assert refreshed.value.status == 200 and page.locator("#rate-stored").count() == 1
    page.goto(https_hub.url + "/console/fleet")
    assert violations == []
    page.context.close()

    static = _context(browser, java_script_enabled=False).new_page()
    static.goto(https_hub.url + "/console/login")
    hub = https_hub.hub
    static.fill("#token", hub.store.create_api_token("nojs", "viewer", now=hub.services.clock.now()))
    static.click("button[type=submit]")
    assert re.match(r"\d+ devices? match", static.locator("#result-count").inner_text())
    assert static.locator("a[href='/console/devices/dev-1']").count() == 1
    static.context.close()


def test_pause_resume_and_abort_a_rollout(browser: Any, https_hub: HttpsHub) -> None:
    from iotguard.rollout import RolloutState
    from tests.updates.hubside import HUB_MODEL, hub_firmware

    hub = https_hub.hub
    repo = hub_firmware(hub)
    for i in range(4):
        repo.device(f"dev-{i}")
    repo.publish(2)
    rollout = hub.services.rollouts.start(HUB_MODEL, 2, actor="alice", stages=(50.0, 100.0)).rollout_id
    page = _login(browser, https_hub, "security-admin")
    page.click("a[href='/console/rollouts']")
    assert page.locator(f"#state-{rollout}").inner_text() == "running"
    assert "in the cohort" in page.locator(f"#cohort-{rollout}").inner_text()
    assert page.locator(f"#gates-{rollout} tbody tr").count() == 5
    page.fill(f"form[action$='/{rollout}/pause'] input[name=reason]", "browser test")
    page.click(f"#pause-{rollout}")
    assert page.locator("#notice").inner_text() == f"Done: paused-{rollout}."
    assert page.locator(f"#state-{rollout}").inner_text() == "paused"
    assert hub.services.rollouts.store.get(rollout).state is RolloutState.PAUSED
    page.click(f"#resume-{rollout}")
    assert hub.services.rollouts.store.get(rollout).state is RolloutState.RUNNING
    page.click(f"#abort-{rollout}")
    assert page.locator(f"#state-{rollout}").inner_text() == "aborted"
    assert hub.services.rollouts.store.get(rollout).state is RolloutState.ABORTED
    assert page.locator(f"#pause-{rollout}, #resume-{rollout}, #abort-{rollout}").count() == 0
    page.context.close()


def test_audit_page_verifies_witness_cosignatures(browser: Any, https_hub: HttpsHub, tmp_path: Path) -> None:
    from tests.hub.console.test_console_witnesses import make_final

    hub = https_hub.hub
    make_final(hub, tmp_path)
    page = _login(browser, https_hub, "security-admin")
    page.click("a[href='/console/audit']")
    assert page.locator("#cosignatures tbody tr").count() == 2
    assert page.locator("#cosignatures").inner_text().count("verified") == 2
    page.click("#verify")
    result = page.locator("#verify-result").inner_text()
    assert result.startswith("Verified:") and "2 of the 2 required witness cosignatures" in result
    final = hub.services.audit.log.latest_final_checkpoint()
    assert final is not None and page.locator("#final-checkpoint").inner_text().strip() == final.strip()
    page.context.close()


def test_device_readings_for_a_consented_purpose_only(browser: Any, https_hub: HttpsHub) -> None:
    from iotguard.audit import AuditEvent
    from tests.hub.console.test_console_purpose_reads import seed_research_readings

    hub = https_hub.hub
    seed_research_readings(hub)
    page = _login(browser, https_hub, "operator")
    page.goto(https_hub.url + "/console/devices/dev-1")
    assert page.locator("#purpose option").all_inner_texts() == ["research"]
    assert page.locator("#readings").count() == 0
    page.click("#read-readings")
    assert page.locator("#shown-purpose").inner_text() == "research"
    assert page.locator("#readings tbody tr").count() >= 1 and "19.25" not in page.content()
    hub.deliver()
    log = hub.services.audit.log
    accessed = [e for e in (AuditEvent.from_cbor(b) for b in log.entries(0, log.size())) if e.type == "data.accessed"]
    assert accessed[-1].details["purpose"] == "research" and accessed[-1].details["path"] == "console"
    page.context.close()

    viewer = _login(browser, https_hub, "viewer")
    viewer.goto(https_hub.url + "/console/devices/dev-1")
    assert viewer.locator("#readings-withheld").count() == 1 and viewer.locator("#purpose").count() == 0
    response = viewer.goto(https_hub.url + "/console/devices/dev-1?purpose=research")
    assert response.status == 403 and viewer.locator("#readings").count() == 0
    viewer.context.close()
