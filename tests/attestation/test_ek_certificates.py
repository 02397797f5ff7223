"""EK certificate chains checked against the TPM manufacturer roots before an AK is certified (ADR 0812).

Credential activation proves an AK sits in the TPM holding the recorded EK;
only the manufacturer's certificate chain shows that EK is a real TPM's. The
test manufacturer is swtpm's local CA (``swtpm_localca``, as ``swtpm_setup
--create-ek-cert`` uses it): a root, an intermediate, TCG EK certificates.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from iotguard.agent import Agent
from iotguard.attestation import load_ek_chain, load_ek_roots, verify_ek_certificate
from iotguard.errors import ConfigError, IntegrityError, MalformedError
from tests.attestation.conftest import Device, EkCa, Firmware, _make_device, endorse, make_ek_ca
from tests.attestation.test_hub_attestation import _certify_ak
from tests.hub.conftest import HubParts, make_hub

NOW = datetime(2026, 12, 1, tzinfo=UTC)


# -- the chain check itself (no TPM) ---------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool, path_length: int | None = None,
          not_after: datetime = NOW + timedelta(days=365), key_cert_sign: bool = True) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - timedelta(days=1)).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, key_cert_sign, True, False,
                                                      False), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


class _Pki:
    """A manufacturer: root -> intermediate -> EK certificate, all made here."""

    def __init__(self, name: str = "manufacturer") -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.ek_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert(f"{name} root", self.root_key, f"{name} root", self.root_key, ca=True)
        self.inter = _cert(f"{name} ek ca", self.inter_key, f"{name} root", self.root_key, ca=True, path_length=0)
        self.ek = _cert("ek", self.ek_key, f"{name} ek ca", self.inter_key, ca=False)

    @property
    def ek_spki(self) -> bytes:
        return self.ek_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_a_chain_through_an_intermediate_to_a_root_verifies() -> None:
    pki = _Pki()
    verify_ek_certificate((pki.ek, pki.inter), pki.ek_spki, (pki.root,), NOW)


def test_ek_certificate_from_another_manufacturer_is_untrusted() -> None:
    """Attack: software posing as a TPM, with an EK certificate from a CA of its own making."""
    pki, forger = _Pki(), _Pki("forger")
    with pytest.raises(IntegrityError, match="no valid chain") as e:
        verify_ek_certificate((forger.ek, forger.inter), forger.ek_spki, (pki.root,), NOW)
    assert e.value.code == "ek_certificate_untrusted"


def test_an_intermediate_under_the_same_name_but_another_key_does_not_verify() -> None:
    """Attack: an intermediate forged with the genuine name (the signature, not the name, decides)."""
    pki = _Pki()
    fake_key = ec.generate_private_key(ec.SECP256R1())
    fake_inter = _cert("manufacturer ek ca", fake_key, "manufacturer root", fake_key, ca=True)
    ek = _cert("ek", pki.ek_key, "manufacturer ek ca", fake_key, ca=False)
    with pytest.raises(IntegrityError, match="no valid chain"):
        verify_ek_certificate((ek, fake_inter), pki.ek_spki, (pki.root,), NOW)


@pytest.mark.parametrize("flaw", ["another_key", "expired", "leaf_is_ca", "issuer_not_ca", "no_cert_sign",
                                  "path_length", "missing_intermediate", "empty"])
def test_each_flaw_in_a_chain_is_refused(flaw: str) -> None:
    pki = _Pki()
    chain: tuple[x509.Certificate, ...] = (pki.ek, pki.inter)
    spki = pki.ek_spki
    if flaw == "another_key":
        spki = _Pki().ek_spki
    elif flaw == "expired":
        chain = (_cert("ek", pki.ek_key, "manufacturer ek ca", pki.inter_key, ca=False,
                       not_after=NOW - timedelta(seconds=1)), pki.inter)
    elif flaw == "leaf_is_ca":
        chain = (_cert("ek", pki.ek_key, "manufacturer ek ca", pki.inter_key, ca=True), pki.inter)
    elif flaw == "issuer_not_ca":
        inter = _cert("manufacturer ek ca", pki.inter_key, "manufacturer root", pki.root_key, ca=False)
        chain = (pki.ek, inter)
    elif flaw == "no_cert_sign":
        inter = _cert("manufacturer ek ca", pki.inter_key, "manufacturer root", pki.root_key, ca=True,
                      key_cert_sign=False)
        chain = (pki.ek, inter)
    elif flaw == "path_length":  # the root allows no intermediate below it
        root = _cert("manufacturer root", pki.root_key, "manufacturer root", pki.root_key, ca=True, path_length=0)
        with pytest.raises(IntegrityError):
            verify_ek_certificate(chain, spki, (root,), NOW)
        return
    elif flaw == "missing_intermediate":
        chain = (pki.ek,)
    elif flaw == "empty":
        chain = ()
    with pytest.raises(IntegrityError) as e:
        verify_ek_certificate(chain, spki, (pki.root,), NOW)
    assert e.value.code == "ek_certificate_untrusted"


def test_chains_and_roots_are_parsed_strictly() -> None:
    pki = _Pki()
    pem = pki.ek.public_bytes(Encoding.PEM) + pki.inter.public_bytes(Encoding.PEM)
    assert load_ek_chain(pem) == (pki.ek, pki.inter)
    assert load_ek_chain(pki.ek.public_bytes(Encoding.DER)) == (pki.ek,)
    for bad in (b"", b"\x30\x03junk", b"x" * 20000, pem * 3):
        with pytest.raises(MalformedError):
            load_ek_chain(bad)
    assert load_ek_roots(pki.root.public_bytes(Encoding.PEM)) == (pki.root,)
    for bad_roots in (b"", b"not pem", pki.ek.public_bytes(Encoding.PEM)):  # an end-entity certificate is no root
        with pytest.raises(ConfigError):
            load_ek_roots(bad_roots)


# -- through the hub, with swtpm and swtpm's local CA ---------------------------------------------

@pytest.fixture
def tpm_device(request: pytest.FixtureRequest, tmp_path: Path, firmware: Firmware) -> Iterator[Device]:
    made, close = _make_device("tpm2", request, tmp_path / "device-a", firmware, "device-a")
    yield made
    close()


def _certify_request(hub: HubParts, agent: Agent, area: bytes) -> Any:
    return hub.client.post("/v1/attest/ak", json=agent._signed("certify_ak", {"ak_public_area": area,
                                                                             "secret": b"", "ek_certificate": b""})[0])


def _refusals(hub: HubParts) -> list[list[str]]:
    from iotguard.audit import AuditEvent, EventType

    hub.deliver()
    log = hub.services.audit.log
    events = [AuditEvent.from_cbor(e) for e in log.entries(0, log.size())]
    return [list(e.details["reasons"]) for e in events
            if e.type == EventType.ATTESTATION_KEY_CERTIFIED and e.details["status"] == "refused"]


@pytest.mark.swtpm
def test_ek_without_manufacturer_chain_is_refused(hub: HubParts, tpm_device: Device, tmp_path: Path) -> None:
    """Attack: an EK recorded without a certificate, or with one from a CA the hub does not trust."""
    ek = tpm_device.root.endorsement_key()  # type: ignore[attr-defined]
    area = tpm_device.root.attestation_key_public_area()  # type: ignore[attr-defined]
    agent = hub.agent("dev-1")
    certification = hub.services.attestation.certification
    certification.record_endorsement_key("dev-1", ek)  # no certificate
    r = _certify_request(hub, agent, area)
    assert (r.status_code, r.json()["error"]) == (403, "ek_certificate_untrusted"), r.text
    assert "credential_blob" not in r.json()
    rogue = make_ek_ca(tmp_path / "rogue-ca")  # a real swtpm local CA, but not the configured manufacturer
    certification.record_endorsement_key("dev-1", ek, rogue.certify(ek))
    r = _certify_request(hub, agent, area)
    assert (r.status_code, r.json()["error"]) == (403, "ek_certificate_untrusted"), r.text
    assert _refusals(hub) == [["ek_certificate_untrusted"], ["ek_certificate_untrusted"]]
    endorsement = hub.services.attestation.store.endorsement("dev-1")
    assert endorsement is not None and endorsement.certified_key is None


@pytest.mark.swtpm
def test_ek_chain_from_configured_root_is_accepted(hub: HubParts, tpm_device: Device, ek_ca: EkCa) -> None:
    agent = hub.agent("dev-1")
    endorse(hub, "dev-1", tpm_device.root)  # the EK certificate from swtpm's local CA, and its intermediate
    _certify_ak(hub, agent, tpm_device)
    endorsement = hub.services.attestation.store.endorsement("dev-1")
    assert endorsement is not None and endorsement.certified_key == tpm_device.root.attestation_key()
    assert endorsement.ek_certificate.startswith(b"-----BEGIN CERTIFICATE-----")
    assert _refusals(hub) == []


@pytest.mark.swtpm
def test_an_ek_certificate_for_another_key_is_not_recorded(hub: HubParts, tpm_device: Device, ek_ca: EkCa) -> None:
    hub.agent("dev-1")
    certificate = ek_ca.certify(tpm_device.root.endorsement_key())  # type: ignore[attr-defined]
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    foreign = x509.load_der_x509_certificate(ek_ca.issue(other).read_bytes()).public_bytes(Encoding.PEM)
    with pytest.raises(MalformedError) as e:
        hub.services.attestation.certification.record_endorsement_key(
            "dev-1", tpm_device.root.endorsement_key(), foreign)  # type: ignore[attr-defined]
    assert e.value.code == "ek_certificate_mismatch"
    assert hub.services.attestation.store.endorsement("dev-1") is None
    hub.services.attestation.certification.record_endorsement_key(
        "dev-1", tpm_device.root.endorsement_key(), certificate)  # type: ignore[attr-defined]


@pytest.mark.swtpm
def test_without_configured_roots_every_ek_is_refused_unless_unsafe(
        tmp_path: Path, tpm_device: Device, ek_ca: EkCa, firmware: Firmware, caplog: pytest.LogCaptureFixture) -> None:
    """Secure by default: a hub that trusts no manufacturer certifies no TPM attestation key."""
    ek = tpm_device.root.endorsement_key()  # type: ignore[attr-defined]
    area = tpm_device.root.attestation_key_public_area()  # type: ignore[attr-defined]
    strict = make_hub(tmp_path / "strict")
    try:
        agent = strict.agent("dev-1")
        strict.services.attestation.certification.record_endorsement_key("dev-1", ek, ek_ca.certify(ek))
        r = _certify_request(strict, agent, area)
        assert (r.status_code, r.json()["error"]) == (409, "ek_roots_not_configured"), r.text
    finally:
        strict.store.engine.dispose()
    with caplog.at_level(logging.WARNING):
        unsafe = make_hub(tmp_path / "unsafe", unsafe_accept_unendorsed_ek=True)
    try:
        assert "UNSAFE" in caplog.text
        agent = unsafe.agent("dev-1")
        unsafe.services.attestation.certification.record_endorsement_key("dev-1", ek)  # no certificate at all
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            r = _certify_request(unsafe, agent, area)
        assert r.status_code == 200 and "credential_blob" in r.json(), r.text
        assert "UNSAFE" in caplog.text and "dev-1" in caplog.text
    finally:
        unsafe.store.engine.dispose()


def test_tpm_unsupported_is_a_client_error_not_a_server_error(hub: HubParts, monkeypatch: pytest.MonkeyPatch) -> None:
    """A certify_ak request to a hub without TPM support (tpm2-pytss) is answered 422, never 5xx."""
    agent = hub.agent("dev-1")
    hub.services.attestation.store.set_endorsement_key("dev-1", b"\x00\x02ek", NOW)
    monkeypatch.setitem(sys.modules, "tpm2_pytss", None)  # the import fails as if not installed
    r = _certify_request(hub, agent, b"\x00\x02ak")
    assert (r.status_code, r.json()["error"]) == (422, "tpm_unsupported"), r.text


# -- revocation (ADR 0814) ---------------------------------------------------------------------------


def _crl(issuer: str, key: Any, *serials: int, next_update: datetime = NOW + timedelta(days=7)
         ) -> x509.CertificateRevocationList:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(_name(issuer))
               .last_update(NOW - timedelta(days=1)).next_update(next_update))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - timedelta(hours=1)).build())
    return builder.sign(key, hashes.SHA256())


def test_ek_certificate_on_its_issuers_crl_is_revoked() -> None:
    """Attack: a TPM whose EK the manufacturer revoked (extracted key, recalled part) still certifies an AK."""
    pki = _Pki()
    chain = (pki.ek, pki.inter)
    current = _crl("manufacturer ek ca", pki.inter_key, pki.ek.serial_number + 1)  # lists another TPM only
    verify_ek_certificate(chain, pki.ek_spki, (pki.root,), NOW, (current,))
    revoked = _crl("manufacturer ek ca", pki.inter_key, pki.ek.serial_number)
    with pytest.raises(IntegrityError) as e:
        verify_ek_certificate(chain, pki.ek_spki, (pki.root,), NOW, (current, revoked))
    assert e.value.code == "ek_certificate_revoked"


def test_revoked_intermediate_is_refused() -> None:
    pki = _Pki()
    root_crl = _crl("manufacturer root", pki.root_key, pki.inter.serial_number)
    with pytest.raises(IntegrityError) as e:
        verify_ek_certificate((pki.ek, pki.inter), pki.ek_spki, (pki.root,), NOW, (root_crl,))
    assert e.value.code == "ek_certificate_revoked"


def test_crl_not_signed_by_the_issuer_is_refused() -> None:
    """Attack: a CRL forged under the intermediate's name (to revoke, or to stand in for the real one)."""
    pki = _Pki()
    forged = _crl("manufacturer ek ca", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(IntegrityError) as e:
        verify_ek_certificate((pki.ek, pki.inter), pki.ek_spki, (pki.root,), NOW, (forged,))
    assert e.value.code == "ek_crl_invalid"


def test_crl_past_next_update_is_refused() -> None:
    """An out-of-date CRL could hide a later revocation: certification through its issuer stops (fail closed)."""
    pki = _Pki()
    old = _crl("manufacturer ek ca", pki.inter_key, next_update=NOW - timedelta(seconds=1))
    with pytest.raises(IntegrityError) as e:
        verify_ek_certificate((pki.ek, pki.inter), pki.ek_spki, (pki.root,), NOW, (old,))
    assert e.value.code == "ek_crl_stale"
    verify_ek_certificate((pki.ek, pki.inter), pki.ek_spki, (pki.root,), NOW - timedelta(seconds=2), (old,))


def test_crls_are_parsed_strictly(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding as Enc

    from iotguard.attestation import load_ek_crl
    from iotguard.config import HubConfig
    from iotguard.hub.services.ak_certification import ek_crls_from_config

    crl = _crl("manufacturer ek ca", _Pki().inter_key, 7)
    assert load_ek_crl(crl.public_bytes(Enc.PEM)) == crl
    assert load_ek_crl(crl.public_bytes(Enc.DER)) == crl
    for bad in (b"", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", b"\x30\x03\x02\x01\x01"):
        with pytest.raises(ConfigError):
            load_ek_crl(bad)
    good, garbage = tmp_path / "good.crl", tmp_path / "garbage.crl"
    good.write_bytes(crl.public_bytes(Enc.DER))
    garbage.write_bytes(b"not a crl")
    assert ek_crls_from_config(HubConfig(tpm_ek_crls=[str(good)])) == (crl,)
    for paths in ([str(garbage)], [str(tmp_path / "missing.crl")]):
        with pytest.raises(ConfigError):
            ek_crls_from_config(HubConfig(tpm_ek_crls=paths))


@pytest.mark.swtpm
def test_revoked_ek_certificate_is_refused_at_certification_even_when_unsafe(
        tmp_path: Path, tpm_device: Device, ek_ca: EkCa, caplog: pytest.LogCaptureFixture) -> None:
    """The manufacturer (swtpm's local CA) revokes this TPM's EK certificate: no AK of it is certified."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ek = tpm_device.root.endorsement_key()  # type: ignore[attr-defined]
    area = tpm_device.root.attestation_key_public_area()  # type: ignore[attr-defined]
    chain = ek_ca.certify(ek)
    leaf, intermediate = load_ek_chain(chain)[:2]
    signing_key = load_pem_private_key((ek_ca.directory / "signkey.pem").read_bytes(), None)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(intermediate.subject)
           .last_update(datetime.now(UTC) - timedelta(hours=1)).next_update(datetime.now(UTC) + timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(leaf.serial_number)
                                    .revocation_date(datetime.now(UTC) - timedelta(minutes=5)).build())
           .sign(signing_key, hashes.SHA256()))  # type: ignore[arg-type]
    crl_file = tmp_path / "manufacturer.crl"
    crl_file.write_bytes(crl.public_bytes(Encoding.PEM))
    for name, unsafe in (("strict", False), ("unsafe", True)):
        hub = make_hub(tmp_path / name, tpm_ek_roots=str(ek_ca.roots_file), tpm_ek_crls=[str(crl_file)],
                       unsafe_accept_unendorsed_ek=unsafe)
        try:
            agent = hub.agent("dev-1")
            hub.services.attestation.certification.record_endorsement_key("dev-1", ek, chain)
            r = _certify_request(hub, agent, area)
            assert (r.status_code, r.json()["error"]) == (403, "ek_certificate_revoked"), r.text
            assert "credential_blob" not in r.json()
            assert _refusals(hub) == [["ek_certificate_revoked"]]
        finally:
            hub.store.engine.dispose()


# -- the EK certificate read from the TPM's NV (ADR 0815) ---------------------------------------------


def _nv_hub(tmp_path: Path, ek_ca: EkCa, *, intermediates: bool = True) -> HubParts:
    extra = {"tpm_ek_intermediates": str(ek_ca.directory / "issuercert.pem")} if intermediates else {}
    return make_hub(tmp_path, tpm_ek_roots=str(ek_ca.roots_file), **extra)


def _post(hub: HubParts, agent: Agent) -> Any:
    def post(body: dict[str, Any]) -> Any:
        r = hub.client.post("/v1/attest/ak", json=agent._signed("certify_ak", body)[0])
        assert r.status_code == 200, r.text
        return r.json()

    return post


@pytest.mark.swtpm
def test_ek_certificate_read_from_tpm_nv_certifies_the_ak_without_an_operator_certificate(
        tmp_path: Path, ek_ca: EkCa, manufactured_swtpm: Any) -> None:
    """swtpm_setup wrote the EK certificate into NV; the agent reads it and the hub checks its chain."""
    from iotguard.agent.attester import Attester
    from iotguard.agent.boot import BootRecord
    from iotguard.keys.tpm import TpmRootOfTrust, endorsement_key_spki

    root = TpmRootOfTrust(tmp_path / "tpm", tcti=manufactured_swtpm.tcti)
    hub = _nv_hub(tmp_path / "hub", ek_ca)
    try:
        certificate = root.endorsement_certificate()
        leaf = x509.load_der_x509_certificate(certificate)
        spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert spki == endorsement_key_spki(root.endorsement_key())  # the EK used for activation is the certified one
        agent = hub.agent("dev-1")
        hub.services.attestation.certification.record_endorsement_key("dev-1", root.endorsement_key())  # no chain
        Attester(root, BootRecord((), "", b"", ())).certify(_post(hub, agent))
        endorsement = hub.services.attestation.store.endorsement("dev-1")
        assert endorsement is not None and endorsement.certified_key == root.attestation_key()
        assert _refusals(hub) == []
    finally:
        root.close()
        hub.store.engine.dispose()


@pytest.mark.swtpm
def test_nv_certificate_of_another_tpm_or_without_a_path_to_a_root_is_refused(
        tmp_path: Path, ek_ca: EkCa, manufactured_swtpm: Any, swtpm: Any) -> None:
    """Attack: a device presents another (genuine) TPM's EK certificate; and a path the hub cannot complete."""
    from iotguard.keys.tpm import TpmRootOfTrust

    root = TpmRootOfTrust(tmp_path / "tpm", tcti=manufactured_swtpm.tcti)
    plain = TpmRootOfTrust(tmp_path / "plain", tcti=swtpm.tcti)  # a TPM without certificates in NV
    hubs = [_nv_hub(tmp_path / "hub", ek_ca), _nv_hub(tmp_path / "no-intermediates", ek_ca, intermediates=False)]
    try:
        assert plain.endorsement_certificate() == b""
        area = plain.attestation_key_public_area()
        genuine = root.endorsement_certificate()
        hub = hubs[0]
        agent = hub.agent("dev-1")
        hub.services.attestation.certification.record_endorsement_key("dev-1", plain.endorsement_key())
        body = {"ak_public_area": area, "secret": b"", "ek_certificate": genuine}
        r = hub.client.post("/v1/attest/ak", json=agent._signed("certify_ak", body)[0])
        assert (r.status_code, r.json()["error"]) == (403, "ek_certificate_untrusted"), r.text
        hub = hubs[1]
        agent = hub.agent("dev-1")
        hub.services.attestation.certification.record_endorsement_key("dev-1", root.endorsement_key())
        body = {"ak_public_area": root.attestation_key_public_area(), "secret": b"", "ek_certificate": genuine}
        r = hub.client.post("/v1/attest/ak", json=agent._signed("certify_ak", body)[0])
        assert (r.status_code, r.json()["error"]) == (403, "ek_certificate_untrusted"), r.text
    finally:
        root.close()
        plain.close()
        for hub in hubs:
            hub.store.engine.dispose()
