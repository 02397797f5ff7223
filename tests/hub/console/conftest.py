"""Console test helpers: an in-process hub whose test client speaks HTTPS (the session cookie is Secure)."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from iotguard.agent import Agent
from iotguard.agent.attester import Attester
from iotguard.agent.boot import MeasuredBoot, provision_boot_anchor
from iotguard.attestation import reference_release
from iotguard.clock import SystemClock
from iotguard.hub.broker import wait_for_port
from iotguard.hub.tls import HubTls, add_browser_certificate
from iotguard.keys import SoftwareKeyStore
from iotguard.keys.software_rot import SoftwareRootOfTrust
from tests.attestation.conftest import BINDING, MODEL, POLICY, Firmware, firmware  # noqa: F401 (a fixture)
from tests.hub.conftest import HubParts, make_hub

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')


@dataclass
class ConsoleHub:
    hub: HubParts

    def browser(self) -> TestClient:
        """A fresh HTTPS client with its own cookie jar (one browser)."""
        return TestClient(self.hub.app, base_url="https://testserver", follow_redirects=False)

    def token(self, role: str) -> str:
        return self.hub.store.create_api_token(f"console-{role}", role, now=SystemClock().now())

    def login(self, role: str) -> TestClient:
        """A browser logged in with a fresh API token of ``role``."""
        client = self.browser()
        form = client.get("/console/login")
        r = client.post("/console/login", data={"token": self.token(role),
                                                "login_csrf": LOGIN_CSRF.search(form.text).group(1)})  # type: ignore[union-attr]
        assert r.status_code == 303, r.text
        return client

    def owner_code(self, subject_id: str) -> str:
        """An owner access code issued the way a privacy officer does it, on the Privacy page."""
        officer = self.login("privacy-officer")
        csrf = self.csrf(officer, f"/console/privacy?subject={subject_id}")
        r = officer.post("/console/privacy/owner-token", data={"csrf": csrf, "subject": subject_id})
        match = re.search(r'id="owner-code">([^<]+)<', r.text)
        assert match, r.text
        return match.group(1)

    def owner_login(self, code: str) -> tuple[TestClient, int]:
        """A browser that posted ``code`` to the owner login form, and the status it got."""
        client = self.browser()
        form = client.get("/console/owner/login")
        token = LOGIN_CSRF.search(form.text)
        assert token
        return client, client.post("/console/owner/login",
                                   data={"token": code, "login_csrf": token.group(1)}).status_code

    @staticmethod
    def csrf(client: TestClient, page: str) -> str:
        r = client.get(page)
        assert r.status_code == 200, (page, r.status_code)
        match = CSRF.search(r.text)
        assert match, page
        return match.group(1)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[ConsoleHub]:
    parts = make_hub(tmp_path)
    yield ConsoleHub(parts)
    parts.store.engine.dispose()


def attest(hub: HubParts, agent: Agent, tmp_path: Path, fw: Firmware) -> None:
    """A real appraisal on the software root of trust: the device boots signed firmware and attests,
    so its trust tier is ``verified`` with a fresh attestation (what releasing from quarantine needs)."""
    service = hub.services.attestation
    service.set_policy("thermo-1", POLICY.split("[models.gateway-v1]")[0].replace(MODEL, "thermo-1"))
    for version in ("1.0.0", "1.1.0"):
        release = fw.references.lookup(MODEL, version)
        assert release is not None
        service.add_reference(reference_release("thermo-1", version, release.measurements))
    store = SoftwareKeyStore(tmp_path / f"rot-{agent.device_id}", device_binding=BINDING + agent.device_id.encode())
    anchor = provision_boot_anchor(store, fw.key.public_key().public_bytes_raw())
    root = SoftwareRootOfTrust(store)
    record = MeasuredBoot(store, root, anchor).boot(fw.releases["1.0.0"])
    assert agent.attest(Attester(root, record))["trust_tier"] == "verified"


@dataclass
class HttpsHub:
    """The in-process hub's API (with the console) served by uvicorn over TLS 1.3 on 127.0.0.1."""

    hub: HubParts
    url: str
    server: uvicorn.Server
    thread: threading.Thread


def serve_https(hub: HubParts) -> HttpsHub:
    """Serve ``hub.app`` over HTTPS with the hub's own API certificate (issued by the fleet CA)."""
    tls = HubTls(Path(hub.cfg.data_dir), hub.services.lifecycle.ca)
    tls.ensure(hub.services.clock.now(), api_names=["127.0.0.1", "localhost"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(hub.app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            lifespan="off", ssl_certfile=str(tls.api_file))
    config.load()
    if isinstance(config.ssl, ssl.SSLContext):
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
        add_browser_certificate(config.ssl, tls, hub.cfg.console_tls_file)  # as the hub does
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console-test-https", daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, timeout=15)
    return HttpsHub(hub, f"https://127.0.0.1:{port}", server, thread)


@pytest.fixture
def https_hub(tmp_path: Path) -> Iterator[HttpsHub]:
    parts = make_hub(tmp_path)
    served = serve_https(parts)
    yield served
    served.server.should_exit = True
    served.thread.join(timeout=10)
    parts.store.engine.dispose()
