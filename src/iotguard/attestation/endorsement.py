"""Endorsement-key certificates: a TPM's EK vouched for by its manufacturer.

A TPM manufacturer certifies each TPM's endorsement key (EK) with an X.509
certificate (TCG EK Credential Profile 2.0; the ECC P-256 EK's certificate
sits in the TPM's NV index ``0x01c0000a``) that chains to the manufacturer's
root CA, usually through an intermediate. Credential activation (ADR 0810)
proves an AK sits in the TPM holding a given EK; only the EK certificate
chain shows that EK belongs to a genuine TPM and not to software posing as
one (ADR 0812).

:func:`load_ek_roots` parses the manufacturer roots an operator trusts
(``hub.tpm_ek_roots``, a PEM bundle); :func:`load_ek_chain` parses a
recorded certificate chain strictly (DER certificate or PEM bundle, leaf
first, size limits first); :func:`verify_ek_certificate` checks the chain for
a given EK public key at a given time. No I/O: bytes and a clock in, a
result or an exception out.

**Revocation** (ADR 0814): :func:`load_ek_crl` parses a certificate
revocation list (``hub.tpm_ek_crls``: PEM or DER files). Given CRLs,
:func:`verify_ek_certificate` checks every certificate on the path against the
CRLs of its issuer (same issuer name): a CRL that does not verify with the
issuer's key (``ek_crl_invalid``) or is past its ``nextUpdate`` or has none
(``ek_crl_stale``) refuses the certification — revocation status unknown,
fail closed —, and a listed serial is ``ek_certificate_revoked``. An issuer
without a CRL is not checked for revocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID

from iotguard.errors import ConfigError, IntegrityError, MalformedError

__all__ = [
    "MAX_EK_CHAIN_BYTES",
    "MAX_EK_CHAIN_CERTIFICATES",
    "MAX_EK_CRL_BYTES",
    "MAX_EK_ROOTS_BYTES",
    "load_ek_chain",
    "load_ek_crl",
    "load_ek_roots",
    "verify_ek_certificate",
]

#: Largest EK certificate chain accepted (bytes, DER or PEM).
MAX_EK_CHAIN_BYTES = 16 * 1024
#: Most certificates in a recorded chain (the EK certificate and its intermediates).
MAX_EK_CHAIN_CERTIFICATES = 4
#: Largest manufacturer-roots bundle accepted (bytes).
MAX_EK_ROOTS_BYTES = 1024 * 1024
#: Largest CRL file accepted (bytes).
MAX_EK_CRL_BYTES = 16 * 1024 * 1024

# Critical extensions this check understands (RFC 5280 4.2: an unknown critical extension fails).
# TCG EK certificates mark their subjectAltName (the TPM manufacturer, model, version) critical.
_UNDERSTOOD_CRITICAL = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.EXTENDED_KEY_USAGE, ExtensionOID.CERTIFICATE_POLICIES,
})


def _untrusted(reason: str) -> IntegrityError:
    return IntegrityError(f"EK certificate: {reason}", code="ek_certificate_untrusted")


def _is_ca(cert: x509.Certificate) -> tuple[bool, int | None]:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False, None
    return constraints.ca, constraints.path_length


def load_ek_roots(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Parse the manufacturer root CAs an operator trusts for EK certificates.

    Raises:
        ConfigError: too large, empty, not PEM certificates, or a certificate that is not a CA.
    """
    if len(pem) > MAX_EK_ROOTS_BYTES:
        raise ConfigError(f"EK roots bundle is larger than {MAX_EK_ROOTS_BYTES} bytes")
    try:
        roots = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        raise ConfigError("EK roots bundle is not a PEM bundle of certificates") from None
    for root in roots:
        if not _is_ca(root)[0]:
            raise ConfigError(f"EK root {root.subject.rfc4514_string()!r} is not a CA certificate")
    return roots


def load_ek_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    """Parse a recorded EK certificate chain: one DER certificate, or a PEM bundle with the EK's first.

    Raises:
        MalformedError: empty, too large, not certificates, or too many of them.
    """
    if not 0 < len(data) <= MAX_EK_CHAIN_BYTES:
        raise MalformedError(f"EK certificate chain must be 1..{MAX_EK_CHAIN_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            chain = tuple(x509.load_pem_x509_certificates(data))
        else:
            chain = (x509.load_der_x509_certificate(data),)
    except ValueError:
        raise MalformedError("EK certificate chain is not DER or PEM certificates") from None
    if len(chain) > MAX_EK_CHAIN_CERTIFICATES:
        raise MalformedError(f"EK certificate chain has more than {MAX_EK_CHAIN_CERTIFICATES} certificates")
    return chain


def load_ek_crl(data: bytes) -> x509.CertificateRevocationList:
    """Parse one certificate revocation list (PEM or DER) of a TPM manufacturer CA.

    Its signature and freshness are checked against the issuing CA when a
    chain is verified (:func:`verify_ek_certificate`): the issuer is known only there.

    Raises:
        ConfigError: empty, too large, or not a CRL.
    """
    if not 0 < len(data) <= MAX_EK_CRL_BYTES:
        raise ConfigError(f"EK CRL must be 1..{MAX_EK_CRL_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise ConfigError("EK CRL is not a PEM or DER certificate revocation list") from None


def _check_revocation(cert: x509.Certificate, issuer: x509.Certificate,
                      crls: Sequence[x509.CertificateRevocationList], now: datetime, what: str) -> None:
    """``cert`` (issued by ``issuer``) is not on a CRL of ``issuer``; every such CRL is genuine and current."""
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        public_key = issuer.public_key()
        try:
            valid = crl.is_signature_valid(public_key)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise IntegrityError(f"a CRL naming the issuer of {what} does not verify with its key",
                                 code="ek_crl_invalid")
        next_update = crl.next_update_utc
        if next_update is None or now > next_update or now < crl.last_update_utc:
            raise IntegrityError(f"the CRL of the issuer of {what} is not current (nextUpdate passed or absent)",
                                 code="ek_crl_stale")
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise IntegrityError(f"{what} is revoked by its issuer's CRL", code="ek_certificate_revoked")


def _usable(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _untrusted(f"{what} is outside its validity period")
    for extension in cert.extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
            raise _untrusted(f"{what} has an unknown critical extension {extension.oid.dotted_string}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _may_sign_certificates(cert: x509.Certificate, below: int) -> bool:
    ca, path_length = _is_ca(cert)
    if not ca or (path_length is not None and below > path_length):
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def verify_ek_certificate(chain: Sequence[x509.Certificate], ek_public_key: bytes,
                          roots: Sequence[x509.Certificate], now: datetime,
                          crls: Sequence[x509.CertificateRevocationList] = ()) -> None:
    """Check that ``chain[0]`` certifies ``ek_public_key`` and chains to one of ``roots``.

    The EK certificate names exactly that key (SubjectPublicKeyInfo) and is
    not a CA; each certificate on the path is within its validity period and
    has no critical extension this check does not understand; each issuer is
    a CA allowed to sign certificates (basicConstraints, pathLenConstraint,
    keyUsage) whose signature verifies; the path ends at a configured root.
    Intermediates come from ``chain[1:]``; anything else in the chain is ignored.

    Args:
        chain: The EK certificate, then intermediates (:func:`load_ek_chain`).
        ek_public_key: The EK's DER SubjectPublicKeyInfo.
        roots: The trusted manufacturer roots (:func:`load_ek_roots`).
        now: Time of the check (aware UTC).
        crls: Revocation lists of the manufacturer CAs (:func:`load_ek_crl`).

    Raises:
        IntegrityError: (code ``ek_certificate_untrusted``) no certificate,
            another key, expired, a CA as leaf, or no valid path to a root;
            on the path found: (``ek_certificate_revoked``) a certificate on
            its issuer's CRL, (``ek_crl_invalid``) an issuer's CRL that does
            not verify, (``ek_crl_stale``) one past its ``nextUpdate``.
    """
    if not chain:
        raise _untrusted("none recorded")
    now = now.astimezone(UTC)
    leaf = chain[0]
    if leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != ek_public_key:
        raise _untrusted("certifies another key than the recorded EK")
    if _is_ca(leaf)[0]:
        raise _untrusted("the EK certificate is a CA certificate")
    _usable(leaf, now, "the EK certificate")
    current, intermediates, below = leaf, list(chain[1:]), 0
    path: list[tuple[x509.Certificate, x509.Certificate, str]] = []
    what = "the EK certificate"
    for _ in range(MAX_EK_CHAIN_CERTIFICATES):
        for root in roots:
            if _issued_by(current, root) and _may_sign_certificates(root, below):
                _usable(root, now, "the manufacturer root")
                # Revocation only along a path that is otherwise valid: a CRL is judged by its issuer's key.
                for cert, signer, name in (*path, (current, root, what)):
                    _check_revocation(cert, signer, crls, now, name)
                return
        issuer = next((c for c in intermediates if _issued_by(current, c) and _may_sign_certificates(c, below)),
                      None)
        if issuer is None:
            break
        _usable(issuer, now, "an intermediate CA")
        intermediates.remove(issuer)
        path.append((current, issuer, what))
        current, below, what = issuer, below + 1, "an intermediate CA"
    raise _untrusted("no valid chain to a configured manufacturer root")
