"""The hub's CA, storage and audit keys living in an HSM (SoftHSM2 through PKCS#11)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from fastapi.testclient import TestClient

from iotguard.agent import Agent
from iotguard.config import AgentConfig, HubConfig
from iotguard.hub.core import build_hub_core
from iotguard.keys import Pkcs11KeyStore

pytestmark = pytest.mark.softhsm


def test_hub_runs_with_its_keys_in_an_hsm(softhsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IOTGUARD_PKCS11_PIN", softhsm.pin)
    cfg = HubConfig(data_dir=str(tmp_path / "hub"), keystore_backend="pkcs11", pkcs11_module=softhsm.module,
                    pkcs11_token=softhsm.label)
    core = build_hub_core(cfg)
    assert isinstance(core.keystore, Pkcs11KeyStore)
    assert not (tmp_path / "hub" / "keys").exists()  # nothing of the hub's keys on disk
    client = TestClient(core.app)
    agent = Agent(AgentConfig(data_dir=str(tmp_path / "dev"), hub_url="http://testserver",
                              suites=["chacha20-poly1305"]), "dev-1", http=client)
    agent.enroll(str(core.registry.add_device("dev-1", "thermo-1")))
    cert = x509.load_pem_x509_certificate((tmp_path / "dev" / "device.pem").read_bytes())
    core.registry.ca.verify_device_certificate(cert, now=datetime.now(UTC))
    # the audit log's checkpoints are signed by the HSM-held key too
    note = core.audit.publish_checkpoint()
    core.audit.verify_checkpoint(note)
