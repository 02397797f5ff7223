"""The device transport key (ADR 0600): enrolled, certified, recorded, renewed, revoked."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotguard.errors import IntegrityError
from iotguard.hub.mosquitto import revoked_serials
from iotguard.identity import b64e, parse_enrollment_code, request_transcript, token_hash
from iotguard.identity.transport import check_client_certificate, check_transport_certificate
from iotguard.keys import KeyKind
from tests.hub.conftest import HubParts


def _transport(agent_dir: Path) -> tuple[x509.Certificate, bytes]:
    data = (agent_dir / "transport.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(data)
    key = load_pem_private_key(data[data.index(b"-----BEGIN PRIVATE KEY"):], None)
    return cert, key.public_key().public_bytes_raw()  # type: ignore[union-attr]


def test_enrollment_issues_a_transport_certificate_for_a_file_key(hub: HubParts) -> None:
    agent = hub.agent("dev-1")
    path = agent.dir / "transport.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cert, pub = _transport(agent.dir)
    assert cert.public_key().public_bytes_raw() == pub  # type: ignore[union-attr]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(hub.registry.ca.certificate)
    # A key separate from the identity key, which never leaves the key store.
    assert pub != agent.keystore.public_key("identity")
    record = hub.store.get_device("dev-1")
    assert record.transport_cert_serial == format(cert.serial_number, "x")
    assert record.transport_cert_serial != record.cert_serial


def test_transport_key_substituted_in_enroll_request_fails_proof(hub: HubParts) -> None:
    """The transport key is inside the signed transcript: a relay cannot swap in its own."""
    agent = hub.agent("dev-1", enroll=False)
    code = parse_enrollment_code(str(hub.registry.add_device("dev-1", "thermo-1")))
    identity_pk = agent.keystore.generate("identity", KeyKind.ED25519)
    kex_pk = b"\x09" * 32
    genuine = b"\x05" * 32
    transcript = request_transcript("enroll", {
        "device_id": "dev-1", "token_hash": token_hash(code.secret), "identity_public_key": identity_pk,
        "kex_public_key": kex_pk, "transport_public_key": genuine, "suites": ["chacha20-poly1305"]})
    body = {"device_id": "dev-1", "token": b64e(code.secret), "identity_public_key": b64e(identity_pk),
            "kex_public_key": b64e(kex_pk), "transport_public_key": b64e(b"\x06" * 32),
            "suites": ["chacha20-poly1305"], "signature": b64e(agent.keystore.sign("identity", transcript))}
    r = hub.client.post("/v1/enroll", json=body)
    assert r.status_code == 403 and r.json()["error"] == "enrollment_failed"
    assert hub.store.get_device("dev-1").status == "pending"


def test_revocation_puts_both_certificates_on_the_crl(hub: HubParts) -> None:
    agent = hub.agent("dev-1")
    hub.agent("dev-2")
    cert, _ = _transport(agent.dir)
    record = hub.store.get_device("dev-1")
    hub.registry.revoke("dev-1")
    listed = {serial for serial, _ in revoked_serials(hub.store)}
    assert cert.serial_number in listed
    assert int(record.cert_serial or "0", 16) in listed
    other = hub.store.get_device("dev-2")
    assert int(other.transport_cert_serial or "0", 16) not in listed


def test_renewal_renews_the_transport_certificate_and_revokes_the_old_one(hub: HubParts) -> None:
    agent = hub.agent("dev-1")
    old_cert, old_pub = _transport(agent.dir)
    agent.renew_certificate()
    new_cert, new_pub = _transport(agent.dir)
    assert new_pub != old_pub and new_cert.serial_number != old_cert.serial_number
    assert hub.store.get_device("dev-1").transport_cert_serial == format(new_cert.serial_number, "x")
    listed = {serial for serial, _ in revoked_serials(hub.store)}
    assert old_cert.serial_number in listed and new_cert.serial_number not in listed


def test_reprovisioning_keeps_the_old_transport_certificate_revoked(hub: HubParts) -> None:
    agent = hub.agent("dev-1")
    cert, _ = _transport(agent.dir)
    hub.registry.reprovision("dev-1")
    assert cert.serial_number in {serial for serial, _ in revoked_serials(hub.store)}


def test_device_refuses_a_transport_certificate_for_another_key(hub: HubParts) -> None:
    agent = hub.agent("dev-1")
    cert, pub = _transport(agent.dir)
    ca = hub.registry.ca.certificate
    pem = (agent.dir / "transport.pem").read_bytes()
    now = hub.core.clock.now()
    check_transport_certificate(pem, device_id="dev-1", transport_public_key=pub, ca_certificate=ca, now=now)
    with pytest.raises(IntegrityError):
        check_transport_certificate(pem, device_id="dev-1", transport_public_key=b"\x01" * 32, ca_certificate=ca,
                                    now=now)
    with pytest.raises(IntegrityError):
        check_transport_certificate(pem, device_id="dev-2", transport_public_key=pub, ca_certificate=ca, now=now)
    assert check_client_certificate(cert) == "dev-1"
