"""The device transport key and its TLS client certificate (ADR 0600), pure checks.

A device's identity key never leaves its key store, but a TLS stack needs
the key of its client certificate in a file. So the device generates a
separate Ed25519 *transport key*, sends its public half inside the enroll
(or renew) request that its identity key signs, and the fleet CA issues a
``clientAuth`` certificate with CN = device id for it. Brokers take the
MQTT identity from that CN.

Callers import from this module (``from iotguard.identity.transport import
...``); it is not re-exported from :mod:`iotguard.identity`.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotguard.errors import IntegrityError

__all__ = ["certificate_identity", "check_client_certificate", "check_transport_certificate"]


def certificate_identity(cert: x509.Certificate) -> str:
    """The identity a certificate names: its one subject common name.

    Raises:
        IntegrityError: no common name, or more than one.
    """
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
        raise IntegrityError("certificate subject must hold exactly one common name")
    return names[0].value


def check_client_certificate(cert: x509.Certificate) -> str:
    """Check a certificate may authenticate a TLS client; returns its identity (CN).

    Raises:
        IntegrityError: not a ``clientAuth`` end-entity certificate, or no single CN.
    """
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise IntegrityError("client certificate lacks extendedKeyUsage or basicConstraints") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku or basic.ca:
        raise IntegrityError("certificate is not a TLS client (clientAuth, end-entity) certificate")
    return certificate_identity(cert)


def check_transport_certificate(
    cert_pem: bytes, *, device_id: str, transport_public_key: bytes, ca_certificate: x509.Certificate,
    now: datetime,
) -> x509.Certificate:
    """Check the transport certificate the hub returned before a device installs it.

    Raises:
        IntegrityError: not parseable, not issued by the fleet CA, outside its
            validity, for another identity or key, or not a client certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise IntegrityError("transport certificate is not a PEM certificate") from None
    try:
        cert.verify_directly_issued_by(ca_certificate)
    except (InvalidSignature, ValueError, TypeError):
        raise IntegrityError("transport certificate is not issued by the fleet CA") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IntegrityError("transport certificate is outside its validity period")
    if check_client_certificate(cert) != device_id:
        raise IntegrityError("transport certificate names another device")
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey) or key.public_bytes_raw() != transport_public_key:
        raise IntegrityError("transport certificate is not for this device's transport key")
    return cert
