"""Fixtures for the credential-lifecycle tests: a hub store, a fleet CA, registered devices."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.hub.store import HubStore
from iotguard.identity.ca import FleetCA
from iotguard.keys import SoftwareKeyStore

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BINDING = b"lifecycle-test-device-binding"


def make_ca(root: Path, name: str = "iotguard fleet CA", now: datetime = NOW) -> FleetCA:
    ks = SoftwareKeyStore(root, device_binding=BINDING)
    return FleetCA.create(ks, name=name, now=now)


def register_device(
    store: HubStore, ca: FleetCA, device_id: str, *, model: str = "thermo-1", segment: str = "plant1",
    now: datetime = NOW, validity: timedelta = timedelta(days=30), public_key: bytes | None = None,
) -> x509.Certificate:
    """Register and enroll ``device_id`` straight in the store; returns its certificate."""
    pub = public_key or Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    token = hashlib.sha256(device_id.encode()).digest()
    store.create_device(device_id, model, segment, serial=None, now=now, token_hash=token,
                        token_expires_at=now + timedelta(days=1))
    cert = ca.issue_device_certificate(device_id, pub, now=now, validity=validity, segment=segment)
    store.enroll(device_id, token, now=now, identity_public_key=pub, cert_pem=cert.public_bytes(
        serialization.Encoding.PEM).decode(),
        cert_serial=format(cert.serial_number, "x"), cert_not_after=cert.not_valid_after_utc,
        suite="chacha20-poly1305", wrapped_key=b"\x01" * 48)
    return cert


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HubStore]:
    s = HubStore.open(f"sqlite:///{tmp_path / 'hub.db'}")
    yield s
    s.engine.dispose()


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return make_ca(tmp_path / "ca-keys")
