"""CRL and broker server certificate signed through the fleet CA's key store."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from iotguard.errors import ConfigError
from iotguard.hub.mosquitto import BrokerLimits, hub_queue_size, render_registry_acl
from iotguard.hub.store import HubStore
from iotguard.identity.ca import FleetCA
from iotguard.identity.crl import issue_crl, issue_server_certificate
from tests.lifecycle.conftest import NOW, make_ca, register_device


def test_crl_lists_revoked_serials_and_verifies_under_the_ca(ca: FleetCA) -> None:
    pem = issue_crl(ca, [(1234, NOW), (99, NOW - timedelta(days=1)), (1234, NOW - timedelta(hours=1))],
                    now=NOW, next_update=NOW + timedelta(days=1))
    crl = x509.load_pem_x509_crl(pem)
    assert crl.is_signature_valid(ca.public_key)
    assert crl.issuer == ca.certificate.subject
    assert crl.next_update_utc == NOW + timedelta(days=1)
    assert sorted(r.serial_number for r in crl) == [99, 1234]
    entry = crl.get_revoked_certificate_by_serial_number(1234)
    assert entry is not None and entry.revocation_date_utc == NOW - timedelta(hours=1)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > 0


def test_crl_from_another_ca_does_not_verify(ca: FleetCA, tmp_path) -> None:
    other = make_ca(tmp_path / "other", name="other")
    crl = x509.load_pem_x509_crl(issue_crl(other, [], now=NOW, next_update=NOW + timedelta(hours=1)))
    assert not crl.is_signature_valid(ca.public_key)


@pytest.mark.parametrize("next_update", [NOW, NOW - timedelta(seconds=1), NOW + timedelta(days=30)])
def test_crl_validity_is_bounded(ca: FleetCA, next_update) -> None:
    with pytest.raises(ConfigError):
        issue_crl(ca, [], now=NOW, next_update=next_update)


def test_crl_refuses_bad_serials_and_naive_times(ca: FleetCA) -> None:
    with pytest.raises(ConfigError):
        issue_crl(ca, [(0, NOW)], now=NOW, next_update=NOW + timedelta(hours=1))
    with pytest.raises(ConfigError):
        issue_crl(ca, [], now=NOW.replace(tzinfo=None), next_update=NOW + timedelta(hours=1))


def test_server_certificate_for_dns_and_ip(ca: FleetCA) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    cert = issue_server_certificate(ca, "mqtt.example.org", key, NOW, timedelta(days=30), extra_names=["10.0.0.5"])
    cert.verify_directly_issued_by(ca.certificate)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("host", ["", "bad host", "a/b"])
def test_server_certificate_refuses_bad_names(ca: FleetCA, host: str) -> None:
    with pytest.raises(ConfigError):
        issue_server_certificate(ca, host, Ed25519PrivateKey.generate().public_key(), NOW, timedelta(days=1))


def test_server_certificate_validity_is_bounded(ca: FleetCA) -> None:
    with pytest.raises(ConfigError):
        issue_server_certificate(ca, "h", Ed25519PrivateKey.generate().public_key(), NOW, timedelta(days=5000))


# -- ACL and limits (no broker) ----------------------------------------------------


def test_registry_acl_grants_only_own_topics_to_active_devices(store: HubStore, ca: FleetCA) -> None:
    register_device(store, ca, "dev-a", segment="plant1")
    register_device(store, ca, "dev-r", segment="plant1")
    store.revoke_device("dev-r", now=NOW)
    store.create_device("dev-p", "m", "plant1", serial=None, now=NOW, token_hash=b"p" * 32,
                        token_expires_at=NOW + timedelta(hours=1))
    acl = render_registry_acl(store.list_devices())
    assert "user dev-a\ntopic write iotguard/plant1/dev-a/telemetry\ntopic write iotguard/plant1/dev-a/media\n" \
           "topic read iotguard/plant1/dev-a/ack\ntopic read iotguard/plant1/dev-a/cmd\n" in acl
    assert "user iotguard-hub\ntopic read iotguard/+/+/telemetry\ntopic read iotguard/+/+/media\n" \
           "topic write iotguard/+/+/ack\n" in acl
    assert "dev-r" not in acl and "dev-p" not in acl


def test_registry_acl_refuses_wildcards_and_hub_impersonation(store: HubStore, ca: FleetCA) -> None:
    """Check for a device id chosen to impersonate the hub's broker account."""
    register_device(store, ca, "iotguard-hub")
    with pytest.raises(ConfigError):
        render_registry_acl(store.list_devices())


def test_queue_sizing_is_bounded() -> None:
    assert hub_queue_size(10, 1, timedelta(minutes=1)) == 1_000
    assert hub_queue_size(10_000, 6, timedelta(hours=1)) == 3_600_001
    assert hub_queue_size(10**9, 60, timedelta(days=1)) == 5_000_000
    with pytest.raises(ConfigError):
        BrokerLimits(max_queued_messages=0).check()
