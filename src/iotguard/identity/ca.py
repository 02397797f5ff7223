"""The fleet certificate authority, with its key held in a ``KeyStore``.

``cryptography`` signs certificates only with an in-memory private key, but
the CA key must never leave its key store (software secure element or HSM).
So the CA builds the to-be-signed certificate with the certificate builder,
signs the TBS bytes through the key store, and assembles the DER
``Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }``
itself (RFC 5280 section 4.1). Ed25519 (RFC 8410) has no parameters, so the
algorithm identifier is fixed.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotguard.errors import IntegrityError, KeyStoreError
from iotguard.keys import KeyKind, KeyStore

__all__ = ["FleetCA", "certificate_fingerprint"]

_ED25519_ALG_ID = bytes.fromhex("300506032b6570")  # SEQUENCE { OID 1.3.101.112 }


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _der_len(len(value)) + value


def certificate_fingerprint(cert_pem_or_der: bytes) -> str:
    """SHA-256 fingerprint (hex) of a certificate's DER encoding."""
    if cert_pem_or_der.lstrip().startswith(b"-----"):
        der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(serialization.Encoding.DER)
    else:
        der = cert_pem_or_der
    return hashlib.sha256(der).hexdigest()


class FleetCA:
    """Issues device operational certificates and signs hub responses.

    Args:
        keystore: Holds the CA signing key under ``key_label``.
        certificate: The CA's own self-signed certificate (PEM).
    """

    def __init__(self, keystore: KeyStore, certificate_pem: bytes, key_label: str = "fleet-ca") -> None:
        self._ks = keystore
        self._label = key_label
        self.certificate = x509.load_pem_x509_certificate(certificate_pem)
        self.certificate_pem = certificate_pem
        pub = self.certificate.public_key()
        if not isinstance(pub, Ed25519PublicKey):
            raise KeyStoreError("fleet CA certificate must carry an Ed25519 key")
        if pub.public_bytes_raw() != keystore.public_key(key_label):
            raise KeyStoreError("fleet CA certificate does not match the key in the key store")
        self.public_key = pub
        self.fingerprint = certificate_fingerprint(certificate_pem)

    @classmethod
    def create(
        cls, keystore: KeyStore, *, name: str, now: datetime, validity_days: int = 3650,
        key_label: str = "fleet-ca",
    ) -> FleetCA:
        """Generate the CA key inside ``keystore`` and self-sign its certificate."""
        pub_raw = keystore.generate(key_label, KeyKind.ED25519)
        pub = Ed25519PublicKey.from_public_bytes(pub_raw)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotguard fleet CA")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        )
        pem = _sign_builder(builder, keystore, key_label)
        return cls(keystore, pem, key_label)

    def issue_device_certificate(
        self, device_id: str, device_public_key: bytes, *, now: datetime, validity: timedelta,
        segment: str = "default",
    ) -> x509.Certificate:
        """Issue an operational certificate binding ``device_id`` to its Ed25519 key."""
        pub = Ed25519PublicKey.from_public_bytes(device_public_key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, device_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, segment),
            ]))
            .issuer_name(self.certificate.subject)
            .public_key(pub)
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                f"urn:iotguard:device:{device_id}")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.public_key), critical=False)
        )
        return x509.load_pem_x509_certificate(_sign_builder(builder, self._ks, self._label))

    def sign(self, message: bytes) -> bytes:
        """Sign a hub message (enrollment and re-key responses) with the CA key."""
        return self._ks.sign(self._label, message)

    def verify_device_certificate(self, cert: x509.Certificate, *, now: datetime) -> None:
        """Check a device certificate was issued by this CA and is within validity.

        Raises:
            IntegrityError: bad signature, wrong issuer, or expired.
        """
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise IntegrityError(f"certificate not issued by this CA: {exc}") from None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise IntegrityError("certificate is outside its validity period")


def _sign_builder(builder: x509.CertificateBuilder, keystore: KeyStore, label: str) -> bytes:
    # A throwaway Ed25519 key makes the builder emit a TBS whose signature
    # algorithm field is Ed25519; its own signature is discarded.
    scratch = builder.sign(Ed25519PrivateKey.generate(), algorithm=None)
    tbs = scratch.tbs_certificate_bytes
    signature = keystore.sign(label, tbs)
    der = _tlv(0x30, tbs + _ED25519_ALG_ID + _tlv(0x03, b"\x00" + signature))
    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM)
