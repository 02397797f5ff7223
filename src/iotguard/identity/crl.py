"""Certificate revocation lists and the broker's TLS server certificate.

Both are signed by the fleet CA whose key never leaves its key store. As in
:mod:`iotguard.identity.ca`, ``cryptography`` builds the to-be-signed
structure (signed with a throwaway key only to obtain the TBS bytes with the
Ed25519 algorithm identifier), the CA signs the TBS bytes through
:meth:`FleetCA.sign`, and the outer ``SEQUENCE { tbs, signatureAlgorithm,
signatureValue }`` is assembled here (RFC 5280 sections 4.1 and 5.1; the
two structures have the same outer shape).

Callers import from this module (``from iotguard.identity.crl import
issue_crl``); it is not re-exported from :mod:`iotguard.identity`.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotguard.errors import ConfigError, IntegrityError
from iotguard.identity.ca import FleetCA

__all__ = [
    "MAX_CRL_ENTRIES",
    "MAX_CRL_VALIDITY",
    "MAX_SERVER_CERT_VALIDITY",
    "issue_crl",
    "issue_server_certificate",
]

#: Longest interval between a CRL's ``thisUpdate`` and ``nextUpdate``.
#: A relying party keeps trusting a stale CRL until ``nextUpdate``; a short
#: bound limits how long a lost CRL push can hide a revocation.
MAX_CRL_VALIDITY = timedelta(days=7)
#: Most revoked serials one CRL may carry (keeps the file Mosquitto parses small).
MAX_CRL_ENTRIES = 1_000_000
#: Longest validity of a broker TLS server certificate.
MAX_SERVER_CERT_VALIDITY = timedelta(days=398)

_ED25519_ALG_ID = bytes.fromhex("300506032b6570")  # SEQUENCE { OID 1.3.101.112 }


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _der_len(len(value)) + value


def _signed_der(tbs: bytes, ca: FleetCA) -> bytes:
    signature = ca.sign(tbs)
    return _tlv(0x30, tbs + _ED25519_ALG_ID + _tlv(0x03, b"\x00" + signature))


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(f"{name} must be a timezone-aware UTC datetime")


def issue_crl(
    ca: FleetCA,
    revoked: Sequence[tuple[int, datetime]],
    *,
    now: datetime,
    next_update: datetime,
    crl_number: int | None = None,
) -> bytes:
    """Issue a CRL (PEM) listing the revoked certificate serials.

    Args:
        ca: The fleet CA; signs through its key store.
        revoked: ``(serial, revoked_at)`` per revoked certificate. Duplicate
            serials are listed once (earliest revocation time).
        now: ``thisUpdate``.
        next_update: ``nextUpdate``; must be after ``now`` and at most
            :data:`MAX_CRL_VALIDITY` later.
        crl_number: The monotonically increasing ``cRLNumber`` extension;
            defaults to ``now`` in microseconds since the epoch, which grows as
            long as the hub's clock does.

    Returns:
        The CRL in PEM encoding.

    Raises:
        ConfigError: naive datetimes, a bad ``next_update``, a non-positive
            serial, or more than :data:`MAX_CRL_ENTRIES` entries.
        IntegrityError: the assembled CRL does not verify under the CA key
            (the key store signed with another key).
    """
    _require_aware("now", now)
    _require_aware("next_update", next_update)
    if not now < next_update <= now + MAX_CRL_VALIDITY:
        raise ConfigError(f"next_update must be after now and within {MAX_CRL_VALIDITY}")
    if len(revoked) > MAX_CRL_ENTRIES:
        raise ConfigError(f"a CRL holds at most {MAX_CRL_ENTRIES} entries")
    earliest: dict[int, datetime] = {}
    for serial, revoked_at in revoked:
        if serial <= 0 or serial.bit_length() > 159:
            raise ConfigError("certificate serials are positive and at most 20 octets")
        _require_aware("revoked_at", revoked_at)
        if serial not in earliest or revoked_at < earliest[serial]:
            earliest[serial] = revoked_at
    number = crl_number if crl_number is not None else int(now.timestamp() * 1_000_000)
    if number < 0:
        raise ConfigError("crl_number must not be negative")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(next_update)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial, revoked_at in sorted(earliest.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at).build()
        )
    scratch = builder.sign(Ed25519PrivateKey.generate(), algorithm=None)
    crl = x509.load_der_x509_crl(_signed_der(scratch.tbs_certlist_bytes, ca))
    if not crl.is_signature_valid(ca.public_key):
        raise IntegrityError("CRL signature does not verify under the fleet CA key")
    return crl.public_bytes(serialization.Encoding.PEM)


def issue_server_certificate(
    ca: FleetCA,
    hostname: str,
    public_key: Ed25519PublicKey | EllipticCurvePublicKey,
    now: datetime,
    validity: timedelta,
    *,
    extra_names: Sequence[str] = (),
) -> x509.Certificate:
    """Issue a TLS server certificate for the MQTT broker, the API or (ECDSA P-256, which browsers
    accept where they refuse Ed25519) the web console.

    Args:
        ca: The fleet CA; signs through its key store.
        hostname: The name devices connect to; an IP address literal becomes
            an ``iPAddress`` SAN, anything else a ``dNSName`` SAN.
        public_key: The server's Ed25519 TLS key (ECDSA P-256 for the console's browser certificate).
        now: Start of validity (backdated five minutes for clock skew).
        validity: At most :data:`MAX_SERVER_CERT_VALIDITY`.
        extra_names: More host names or addresses for the SAN.

    Returns:
        The certificate (``serverAuth`` only, not a CA).

    Raises:
        ConfigError: empty or malformed host name, naive ``now``, or a
            validity that is not positive or exceeds the bound.
        IntegrityError: the certificate does not verify under the CA.
    """
    _require_aware("now", now)
    if not timedelta(0) < validity <= MAX_SERVER_CERT_VALIDITY:
        raise ConfigError(f"server certificate validity must be positive and at most {MAX_SERVER_CERT_VALIDITY}")
    names: list[x509.GeneralName] = []
    for name in (hostname, *extra_names):
        if not name or len(name) > 253 or any(c.isspace() or c in "/\\\x00" for c in name):
            raise ConfigError(f"bad broker host name {name!r}")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotguard broker"),
        ]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key), critical=False)
    )
    scratch = builder.sign(Ed25519PrivateKey.generate(), algorithm=None)
    cert = x509.load_der_x509_certificate(_signed_der(scratch.tbs_certificate_bytes, ca))
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except Exception as exc:  # InvalidSignature, ValueError or TypeError from cryptography
        raise IntegrityError(f"server certificate does not verify under the fleet CA: {exc}") from None
    return cert
