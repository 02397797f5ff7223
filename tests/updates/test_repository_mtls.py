"""Devices read the TUF repository as GETs over mutual TLS (ADR 1220): the hub's app behind a real uvicorn
TLS 1.3 listener asking for fleet-CA client certificates, each device authenticated by its transport
certificate, every read decided by Cedar (cached per device, dropped on a posture change), no database write."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import event

from iotguard.agent import Agent
from iotguard.agent.exchange import CA_FILE, TRANSPORT_FILE
from iotguard.agent.firmware import FirmwareUpdateClient
from iotguard.agent.update_channel import REPOSITORY_ROUTE, REPOSITORY_URL, RepositoryFetcher
from iotguard.hub.broker import wait_for_port
from iotguard.hub.device_tls import accept_device_certificates
from iotguard.hub.repository_front import RepositoryFront
from iotguard.hub.tls import HubTls
from iotguard.tls import client_context
from tests.conftest import free_port
from tests.hub.conftest import make_hub
from tests.hub.metrics_scrape import scrape, value
from tests.updates.conftest import image
from tests.updates.hubside import HUB_MODEL, HubFirmware, hub_firmware


@dataclass
class MtlsHub:
    repo: HubFirmware
    url: str
    ca_file: Path

    def device(self, device_id: str) -> tuple[Agent, RepositoryFetcher]:
        agent = self.repo.hub.agent(device_id, model=HUB_MODEL)
        return agent, RepositoryFetcher(self.url, agent.dir / CA_FILE, agent.dir / TRANSPORT_FILE)

    def client(self, agent: Agent, fetcher: RepositoryFetcher) -> FirmwareUpdateClient:
        data_dir = self.repo.hub.tmp / "slots" / agent.device_id
        FirmwareUpdateClient.trust(data_dir, self.repo.root)
        client = FirmwareUpdateClient(data_dir, model=HUB_MODEL, counters=agent.keystore, fetcher=fetcher,
                                      base_url=REPOSITORY_URL, self_test=self.repo.self_test)
        client.slots.provision(image(HUB_MODEL, 1), 1)
        return client

    def get(self, path: str, certificate: Path | None) -> httpx.Response:
        with httpx.Client(base_url=self.url, verify=client_context(self.ca_file, certfile=certificate)) as http:
            return http.get(f"{REPOSITORY_ROUTE}/{path}")


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[MtlsHub]:
    parts = make_hub(tmp_path)
    repo = hub_firmware(parts)
    tls = HubTls(tmp_path / "tls", parts.services.lifecycle.ca)
    tls.ensure(parts.services.clock.now(), api_names=["127.0.0.1"])
    port = free_port()
    reads = parts.services.repository_reads
    assert reads is not None
    front = RepositoryFront(parts.app, reads)
    config = uvicorn.Config(front, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            lifespan="off", ssl_certfile=str(tls.api_file))
    config.load()
    accept_device_certificates(config, tls.ca_file)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port)
    try:
        yield MtlsHub(repo, f"https://127.0.0.1:{port}", tls.ca_file)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        parts.store.engine.dispose()


def test_device_installs_a_release_read_over_mtls(mtls: MtlsHub) -> None:
    agent, fetcher = mtls.device("dev-1")
    mtls.repo.publish(2)
    outcome = mtls.client(agent, fetcher).install(2)
    assert (outcome.version, outcome.rolled_back) == (2, False)
    fetcher.close()


def test_quarantined_device_cannot_read_the_repository_over_mtls(mtls: MtlsHub) -> None:
    """The device's grant is cached, but a posture change drops it: quarantine refuses the very next read."""
    agent, _fetcher = mtls.device("dev-1")
    certificate = agent.dir / TRANSPORT_FILE
    assert mtls.get("metadata/timestamp.json", certificate).status_code == 200  # grant now cached
    mtls.repo.hub.services.posture.quarantine("dev-1", actor="test", reason="suspicious")
    r = mtls.get("metadata/timestamp.json", certificate)
    assert (r.status_code, r.json()["error"]) == (403, "policy_denied")
    mtls.repo.hub.services.posture.release("dev-1", actor="test", reason="cleared")
    assert mtls.get("metadata/timestamp.json", certificate).status_code == 200


def test_repository_read_without_a_client_certificate_is_unauthenticated(mtls: MtlsHub) -> None:
    r = mtls.get("metadata/timestamp.json", None)
    assert (r.status_code, r.json()["error"]) == (401, "unauthenticated")


def test_superseded_transport_certificate_cannot_read_the_repository(mtls: MtlsHub) -> None:
    """Check for a stolen, renewed-away certificate: only the registry's current transport certificate reads."""
    agent, _fetcher = mtls.device("dev-1")
    old = agent.dir / "old-transport.pem"
    shutil.copy(agent.dir / TRANSPORT_FILE, old)
    assert mtls.get("metadata/timestamp.json", old).status_code == 200
    agent.renew_certificate()
    r = mtls.get("metadata/timestamp.json", old)
    assert (r.status_code, r.json()["error"]) == (403, "revoked")
    assert mtls.get("metadata/timestamp.json", agent.dir / TRANSPORT_FILE).status_code == 200


def test_revoked_device_cannot_read_the_repository(mtls: MtlsHub) -> None:
    agent, _fetcher = mtls.device("dev-1")
    assert mtls.get("metadata/timestamp.json", agent.dir / TRANSPORT_FILE).status_code == 200
    mtls.repo.hub.registry.revoke("dev-1")
    r = mtls.get("metadata/timestamp.json", agent.dir / TRANSPORT_FILE)
    assert r.status_code == 403


def test_device_cannot_read_another_models_role_over_mtls(mtls: MtlsHub) -> None:
    agent, _fetcher = mtls.device("dev-1")
    r = mtls.get("metadata/1.cam-2.json", agent.dir / TRANSPORT_FILE)
    assert (r.status_code, r.json()["error"]) == (422, "update_wrong_model")


def test_front_passes_every_other_request_to_the_api(mtls: MtlsHub) -> None:
    agent, _fetcher = mtls.device("dev-1")
    with httpx.Client(base_url=mtls.url, verify=client_context(mtls.ca_file)) as http:
        assert http.get("/health").status_code == 200
        r = http.post(REPOSITORY_ROUTE + "/metadata/timestamp.json")  # only GET is a repository read
        assert r.status_code in (404, 405)
    r = mtls.get("metadata/" + "1" * 300 + ".root.json", agent.dir / TRANSPORT_FILE)
    assert (r.status_code, r.json()["error"]) == (400, "malformed")


def test_warm_repository_reads_touch_no_database(mtls: MtlsHub) -> None:
    """No nonce, no attempt state, no audit row: a warm "nothing new" refresh writes nothing to the database."""
    agent, fetcher = mtls.device("dev-1")
    client = mtls.client(agent, fetcher)
    client.refresh()  # cold: the grant and the metadata files are cached
    statements: list[str] = []
    engine = mtls.repo.hub.services.store.engine
    listener = lambda *args: statements.append(str(args[2]))  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        for _ in range(3):
            client.refresh()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
        fetcher.close()
    assert not [s for s in statements if s.split()[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE")], statements


def test_repository_reads_are_counted_served_and_refused_by_reason(mtls: MtlsHub) -> None:
    hub = mtls.repo.hub
    agent, _fetcher = mtls.device("dev-1")
    certificate = agent.dir / TRANSPORT_FILE
    before = scrape(hub)
    assert mtls.get("metadata/timestamp.json", certificate).status_code == 200
    assert mtls.get("metadata/timestamp.json", certificate).status_code == 200  # the warm (cached) path too
    hub.services.posture.quarantine("dev-1", actor="test", reason="suspicious")
    assert mtls.get("metadata/timestamp.json", certificate).status_code == 403
    after = scrape(hub)
    name = "iotguard_repository_reads_total"
    assert value(after, name, outcome="served", reason="") == value(before, name, outcome="served", reason="") + 2
    denied = {"outcome": "refused", "reason": "policy_denied"}
    assert value(after, name, **denied) == value(before, name, **denied) + 1
    refused = {"action": "update_fetch", "reason": "policy_denied"}
    name = "iotguard_device_requests_refused_total"
    assert value(after, name, **refused) == value(before, name, **refused) + 1


def test_model_target_is_fetched_through_tuf_over_mutual_tls(mtls: MtlsHub) -> None:
    """ADR 1303 over the mTLS repository front: a model target of the device's own model, verified by TUF and by
    the artifact's endorsed signature."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from iotguard.agent.model_delivery import TufModelSource
    from iotguard.learn.model import Model
    from iotguard.updates import ModelTarget

    services = mtls.repo.hub.services
    model = Model(features=3, classes=2)
    record = services.models.publish("digits", model, model.initial(1), metrics={}, source="test", actor="test")
    target = ModelTarget.for_artifact(HUB_MODEL, "digits", record.version, record.artifact,
                                      signing_key=services.models.signing_key(),
                                      endorsement=services.models.endorsement())
    services.firmware.publish_model(target, record.artifact, model_signer=mtls.repo.model_key, actor="test")
    agent, fetcher = mtls.device("dev-m")
    FirmwareUpdateClient.trust(agent.dir, mtls.repo.root)
    ca = x509.load_pem_x509_certificate((agent.dir / CA_FILE).read_bytes()).public_key()
    assert isinstance(ca, Ed25519PublicKey)
    source = TufModelSource(agent.dir, device_model=HUB_MODEL, fetcher=fetcher, base_url=REPOSITORY_URL,
                            ca_public_key=ca.public_bytes_raw())
    artifact = source.fetch("digits")
    assert artifact is not None and (artifact.name, artifact.version) == ("digits", record.version)
    assert source.fetch("no-such-model") is None
