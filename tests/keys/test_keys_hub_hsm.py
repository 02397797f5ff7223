"""The hub's CA, storage and audit keys living in an HSM (SoftHSM2 through PKCS#11)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from fastapi.testclient import TestClient

from iotguard.agent import Agent
from iotguard.config import AgentConfig, HubConfig
from iotguard.hub.api import create_app
from iotguard.hub.compose import build_hub_services
from iotguard.keys import Pkcs11KeyStore

pytestmark = pytest.mark.softhsm


def test_hub_runs_with_its_keys_in_an_hsm(softhsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IOTGUARD_PKCS11_PIN", softhsm.pin)
    cfg = HubConfig(data_dir=str(tmp_path / "hub"), keystore_backend="pkcs11", pkcs11_module=softhsm.module,
                    pkcs11_token=softhsm.label)
    services = build_hub_services(cfg)
    assert isinstance(services.keystore, Pkcs11KeyStore)
    assert not (tmp_path / "hub" / "keys").exists()  # nothing of the hub's keys on disk
    client = TestClient(create_app(services, drain=services.drainer().drain))
    agent = Agent(AgentConfig(data_dir=str(tmp_path / "dev"), hub_url="http://testserver",
                              suites=["chacha20-poly1305"]), "dev-1", http=client)
    agent.enroll(str(services.lifecycle.add_device("dev-1", "thermo-1")))
    cert = x509.load_pem_x509_certificate((tmp_path / "dev" / "device.pem").read_bytes())
    services.lifecycle.ca.verify_device_certificate(cert, now=datetime.now(UTC))
    # the audit log's checkpoints are signed by the HSM-held key too
    note = services.audit.log.publish_checkpoint()
    services.audit.log.verify_checkpoint(note)
