"""The hub's TLS files: issued by the fleet CA, private, and re-issued before they expire."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotguard.hub.tls import HubTls
from tests.lifecycle.conftest import make_ca

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_are_issued_by_the_fleet_ca_and_private(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca", now=NOW)
    tls = HubTls(tmp_path / "hub", ca)
    assert tls.ensure(NOW, api_names=["127.0.0.1", "localhost"], broker_names=["127.0.0.1"])
    assert tls.ca_file.read_bytes() == ca.certificate_pem
    for path in (tls.hub_mqtt_file, tls.api_file, tls.broker_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        _cert(path).verify_directly_issued_by(ca.certificate)
        assert b"PRIVATE KEY" in path.read_bytes()
    hub = _cert(tls.hub_mqtt_file)
    assert hub.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "iotguard-hub"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in hub.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # The API chain carries the CA, so a device can pin it by fingerprint.
    assert tls.api_file.read_bytes().count(b"BEGIN CERTIFICATE") == 2


def test_nothing_is_reissued_while_valid_and_everything_before_expiry(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca", now=NOW)
    tls = HubTls(tmp_path / "hub", ca, client_validity=timedelta(days=30))
    names = {"api_names": ["127.0.0.1"], "broker_names": ["127.0.0.1"]}
    tls.ensure(NOW, **names)
    first = {p: _cert(p).serial_number for p in (tls.hub_mqtt_file, tls.api_file, tls.broker_file)}
    assert not tls.ensure(NOW + timedelta(days=1), **names)
    # Client certificate (30 days) has less than a third left after 21 days; server ones (90 days) do not.
    assert tls.ensure(NOW + timedelta(days=21), **names)
    assert _cert(tls.hub_mqtt_file).serial_number != first[tls.hub_mqtt_file]
    assert _cert(tls.api_file).serial_number == first[tls.api_file]
    assert tls.ensure(NOW + timedelta(days=61), **names)
    assert _cert(tls.api_file).serial_number != first[tls.api_file]


def test_new_host_names_get_a_new_certificate(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca", now=NOW)
    tls = HubTls(tmp_path / "hub", ca)
    tls.ensure(NOW, api_names=["127.0.0.1"])
    assert tls.ensure(NOW, api_names=["127.0.0.1", "hub.example"])
    san = _cert(tls.api_file).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hub.example" in san.get_values_for_type(x509.DNSName)


def test_files_from_another_ca_are_replaced(tmp_path: Path) -> None:
    tls = HubTls(tmp_path / "hub", make_ca(tmp_path / "old", now=NOW))
    tls.ensure(NOW, api_names=["127.0.0.1"])
    new_ca = make_ca(tmp_path / "new", now=NOW)
    tls2 = HubTls(tmp_path / "hub", new_ca)
    assert tls2.ensure(NOW, api_names=["127.0.0.1"])
    _cert(tls2.api_file).verify_directly_issued_by(new_ca.certificate)
    _cert(tls2.hub_mqtt_file).verify_directly_issued_by(new_ca.certificate)
