"""Regenerate the console screenshots in this folder (1280x800) from a demo fleet.

Builds a hub in a temporary directory exactly as the hub process does (``build_hub_services``,
``create_app``), enrolls real agents through the in-process API, raises a detection alert,
quarantines a device, links a data subject, starts a firmware rollout, has two witnesses cosign a
checkpoint (final), serves the API over HTTPS (TLS 1.3, the hub's own certificates) and
photographs each page with Debian's Chromium through Playwright.

Usage: ``.venv/bin/python docs/screenshots/capture.py`` (needs ``apt-get install chromium``).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import tempfile
import threading
from datetime import date
from pathlib import Path
from typing import Any

import uvicorn
from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright
from securesystemslib.signer import CryptoSigner

from iotguard.agent import Agent
from iotguard.audit import SIG_COSIGNATURE_V1, NoteSigner, Witness
from iotguard.config import AgentConfig, HubConfig
from iotguard.detection import Alert, Severity
from iotguard.hub.api import create_app
from iotguard.hub.audit_store import FileWitnessState
from iotguard.hub.broker import wait_for_port
from iotguard.hub.compose import build_hub_services
from iotguard.hub.tls import HubTls, add_browser_certificate
from iotguard.keys import KeyKind, SoftwareKeyStore
from iotguard.updates import FirmwareRelease

OUT = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def _witnesses(tmp: Path) -> tuple[list[NoteSigner], Path]:
    keys = SoftwareKeyStore(tmp / "witness-keys")
    signers = []
    for i in (1, 2):
        keys.generate(f"w{i}", KeyKind.ED25519)
        signers.append(NoteSigner(keys, f"w{i}", f"witness-{i}.example/witness", SIG_COSIGNATURE_V1))
    path = tmp / "witnesses.json"
    path.write_text(json.dumps([{"url": f"https://witness-{i}.example", "key": s.verifier.vkey()}
                                for i, s in enumerate(signers, 1)]))
    return signers, path


def _rollout(services: Any) -> None:
    """A published release 2 of thermo-1 rolling out in stages (offline keys generated here)."""
    firmware = services.firmware
    roots = [CryptoSigner.generate_ed25519() for _ in range(3)]
    targets, model_key = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    firmware.initialise(root_signers=roots, root_threshold=2, targets_signer=targets, actor="demo")
    firmware.add_model("thermo-1", model_signer=model_key, targets_signer=targets, actor="demo")
    header = b"thermo-1 firmware 2\n"
    data = header + hashlib.shake_256(header).digest(2048 - len(header))
    release = FirmwareRelease.for_image("thermo-1", 2, data, end_of_support=date(2031, 12, 31),
                                        disclosure_contact="https://example.org/security",
                                        measurements={"app": hashlib.sha256(data).hexdigest()})
    firmware.publish(release, data, model_signer=model_key, actor="demo")
    services.rollouts.start("thermo-1", 2, actor="rita", stages=(25.0, 50.0, 100.0))


def demo_fleet(tmp: Path) -> tuple[Any, Any]:
    signers, witnesses_file = _witnesses(tmp)
    services = build_hub_services(HubConfig(data_dir=str(tmp / "hub"), witnesses_file=str(witnesses_file),
                                            witness_quorum=2))
    drainer = services.drainer("screenshots")
    app = create_app(services, drain=drainer.drain)
    client = TestClient(app)
    for i in range(8):
        device_id = f"thermo-{i:03d}"
        agent = Agent(AgentConfig(data_dir=str(tmp / "agents" / device_id), hub_url="http://testserver",
                                  suites=["chacha20-poly1305"]), device_id, http=client)
        agent.enroll(str(services.lifecycle.add_device(device_id, "thermo-1", segment=f"plant-{i % 2}")))
    for i in range(40):
        services.lifecycle.add_device(f"spare-{i:03d}", "thermo-1", segment="warehouse")
    services.posture.quarantine("thermo-003", actor="olga", reason="unexpected firmware")
    alert = Alert.create("thermo-005", "scan_fanout", 42.0, Severity.HIGH, (1_767_225_600.0, 1_767_225_615.0),
                         {"new_destinations": 42})
    services.detection.raise_alerts([alert])
    services.consent.record_initial_consent("alice", "thermo-001", {"research": True})
    _rollout(services)
    drainer.drain()
    log = services.audit.log
    note = log.publish_checkpoint(services.clock.now())
    for i, signer in enumerate(signers, 1):  # each witness cosigns (first contact: no consistency proof)
        note = Witness(signer, [log.verifier], FileWitnessState(tmp / f"w{i}.json")).cosign(note, [],
                                                                                            services.clock.now())
    log.save_final_checkpoint(note)
    return services, app


def serve(services: Any, app: Any) -> tuple[str, uvicorn.Server]:
    tls = HubTls(Path(services.cfg.data_dir), services.lifecycle.ca)
    tls.ensure(services.clock.now(), api_names=["127.0.0.1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            ssl_certfile=str(tls.api_file))
    config.load()
    assert isinstance(config.ssl, ssl.SSLContext)
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
    add_browser_certificate(config.ssl, tls)
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    wait_for_port("127.0.0.1", port, timeout=15)
    return f"https://127.0.0.1:{port}", server


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="iotguard-screens-") as tmp:
        services, app = demo_fleet(Path(tmp))
        url, server = serve(services, app)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)

            def login(role: str) -> Any:
                page = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800}).new_page()
                page.goto(url + "/console/login")
                page.fill("#token", services.store.create_api_token(f"{role}-demo", role, now=services.clock.now()))
                page.click("button[type=submit]")
                page.wait_for_load_state()
                return page

            admin = login("security-admin")
            for name, path in (("fleet", "/console/fleet"), ("device", "/console/devices/thermo-003"),
                               ("alerts", "/console/alerts"), ("live", "/console/live"),
                               ("policy", "/console/policy"), ("rollouts", "/console/rollouts")):
                admin.goto(url + path)
                admin.wait_for_load_state("networkidle")
                admin.screenshot(path=str(OUT / f"{name}.png"))
            admin.goto(url + "/console/audit")
            admin.click("#verify")
            admin.screenshot(path=str(OUT / "audit.png"))
            viewer = login("viewer")
            viewer.goto(url + "/console/audit")
            viewer.screenshot(path=str(OUT / "forbidden.png"))
            officer = login("privacy-officer")
            officer.goto(url + "/console/privacy?subject=alice")
            officer.click("text=Issue an owner-portal access code")
            officer.screenshot(path=str(OUT / "privacy.png"))
            code = re.sub(r"\s", "", officer.locator("#owner-code").inner_text())
            owner = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800}).new_page()
            owner.goto(url + "/console/owner/login")
            owner.fill("#token", code)
            owner.click("button[type=submit]")
            owner.wait_for_load_state()
            owner.screenshot(path=str(OUT / "owner.png"))
            browser.close()
        server.should_exit = True
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
