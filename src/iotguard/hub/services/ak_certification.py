"""Certifying a TPM's attestation key against its endorsement key (credential activation).

At enrollment the operator records the device's **endorsement key** (EK):
the public key of its TPM, known from manufacture
(:meth:`AkCertificationService.record_endorsement_key`, ``iotguard
endorsement-key DEVICE FILE``). Before its first TPM evidence the device
certifies its **attestation key** (AK) in two signed ``certify_ak`` device
requests:

1. It sends the AK's public area (``secret`` empty). The hub checks it is a
   proper AK (restricted ECDSA P-256 signing key, fixed to its TPM, generated
   inside it), draws a 32-byte secret and answers ``TPM2_MakeCredential``
   (done in software) of that secret to the recorded EK and the AK's name.
2. Its TPM recovers the secret with ``TPM2_ActivateCredential``, which works
   only on the TPM that holds that EK *and* has exactly that AK loaded. The
   device sends the secret back; the hub records the AK as certified.

Only a certified AK is accepted for evidence from a device with a recorded
EK, and TPM (ES256) evidence is never bound on first use (ADR 0810).

Before it makes a credential, the hub checks the EK certificate chain
recorded with the EK against the TPM manufacturer roots it trusts
(``hub.tpm_ek_roots``, ADR 0812): an EK without a valid chain is refused
(``ek_certificate_untrusted``), and so is every EK when no roots are
configured (``ek_roots_not_configured``) unless the operator turned on
``hub.unsafe_accept_unendorsed_ek``, which is logged loudly. The
pending credential is a single-use, expiring entry in the attestation nonce
table: ``SHA-256("iotguard-ak-credential/1" || AK DER || secret)``, so the
hub keeps no secret and the answer is tied to the AK it was made for.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from iotguard.attestation import load_ek_chain, load_ek_crl, load_ek_roots, verify_ek_certificate
from iotguard.audit import AuditEvent, EventType
from iotguard.clock import Clock
from iotguard.config import HubConfig
from iotguard.errors import AttestationError, ConfigError, IntegrityError, KeyStoreError, MalformedError
from iotguard.hub.outbox import OutboxStore
from iotguard.hub.services.audit import audit_message
from iotguard.hub.stores.attestation import AttestationStore, Endorsement
from iotguard.hub.stores.devices import DeviceStore
from iotguard.identity import VerifiedRequest
from iotguard.keys.rot import AttestationKey

__all__ = ["CREDENTIAL_SECRET_BYTES", "CREDENTIAL_TTL", "AkCertificationService", "ek_crls_from_config",
           "ek_intermediates_from_config", "ek_roots_from_config"]

log = logging.getLogger(__name__)

#: Size of the secret a credential carries (a TPM2B_DIGEST of SHA-256 size).
CREDENTIAL_SECRET_BYTES = 32
#: How long a credential may be answered.
CREDENTIAL_TTL = timedelta(minutes=5)
_PENDING_DOMAIN = b"iotguard-ak-credential/1"
# Refusals from revocation checks keep their code, and the unsafe option does not lift them.
_REVOCATION_CODES = frozenset({"ek_certificate_revoked", "ek_crl_invalid", "ek_crl_stale"})


def _pending_entry(key: AttestationKey, secret: bytes) -> bytes:
    return hashlib.sha256(_PENDING_DOMAIN + key.public_key + secret).digest()


def _tpm() -> Any:
    """``iotguard.keys.tpm``, once ``tpm2-pytss`` (MakeCredential, public-area parsing) is known to import."""
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        raise ConfigError("TPM support (tpm2-pytss) is not installed on this hub", code="tpm_unsupported") from None
    from iotguard.keys import tpm

    return tpm


def ek_roots_from_config(cfg: HubConfig) -> tuple[x509.Certificate, ...]:
    """The TPM manufacturer roots of ``hub.tpm_ek_roots`` (a PEM bundle); none when it is empty.

    Raises:
        ConfigError: the file cannot be read or is not a bundle of CA certificates.
    """
    return _ca_bundle("hub.tpm_ek_roots", cfg.tpm_ek_roots)


def ek_intermediates_from_config(cfg: HubConfig) -> tuple[x509.Certificate, ...]:
    """The TPM manufacturer intermediate CAs of ``hub.tpm_ek_intermediates`` (a PEM bundle); none when empty.

    They are not trust anchors: only a path through them to a root in ``hub.tpm_ek_roots`` counts.

    Raises:
        ConfigError: the file cannot be read or is not a bundle of CA certificates.
    """
    return _ca_bundle("hub.tpm_ek_intermediates", cfg.tpm_ek_intermediates)


def _ca_bundle(setting: str, path: str) -> tuple[x509.Certificate, ...]:
    """The CA certificates of the PEM bundle a setting names; none when the setting is empty."""
    if not path:
        return ()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: {exc.strerror}") from None
    return load_ek_roots(data)


def ek_crls_from_config(cfg: HubConfig) -> tuple[x509.CertificateRevocationList, ...]:
    """The TPM manufacturer CRLs of ``hub.tpm_ek_crls`` (PEM or DER files, ADR 0814).

    Raises:
        ConfigError: a file cannot be read or is not a CRL.
    """
    crls = []
    for path in cfg.tpm_ek_crls:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"hub.tpm_ek_crls {path}: {exc.strerror}") from None
        try:
            crls.append(load_ek_crl(data))
        except ConfigError as exc:
            raise ConfigError(f"hub.tpm_ek_crls {path}: {exc}") from None
    return tuple(crls)


class AkCertificationService:
    """Records endorsement keys and certifies attestation keys against them.

    Args:
        store: The attestation store (endorsement keys, pending credentials).
        devices: The device registry.
        outbox: Where audit entries go.
        clock: Time source.
        credential_ttl: How long a credential may be answered.
        ek_roots: TPM manufacturer roots EK certificates must chain to
            (:func:`ek_roots_from_config`); none: every EK is refused.
        unsafe_accept_unendorsed_ek: UNSAFE: certify AKs against EKs without
            a valid certificate chain (or with no roots configured). Logged loudly.
            A revoked EK certificate is refused even then.
        ek_crls: Revocation lists of the manufacturer CAs (:func:`ek_crls_from_config`).
        ek_intermediates: Manufacturer intermediate CAs for paths from an EK
            certificate read from NV (:func:`ek_intermediates_from_config`).
    """

    def __init__(self, store: AttestationStore, devices: DeviceStore, outbox: OutboxStore, clock: Clock, *,
                 credential_ttl: timedelta = CREDENTIAL_TTL, ek_roots: Sequence[x509.Certificate] = (),
                 unsafe_accept_unendorsed_ek: bool = False,
                 ek_crls: Sequence[x509.CertificateRevocationList] = (),
                 ek_intermediates: Sequence[x509.Certificate] = ()) -> None:
        self.store = store
        self.devices = devices
        self.outbox = outbox
        self.clock = clock
        self.credential_ttl = credential_ttl
        self.ek_roots = tuple(ek_roots)
        self.unsafe_accept_unendorsed_ek = unsafe_accept_unendorsed_ek
        self.ek_crls = tuple(ek_crls)
        self.ek_intermediates = tuple(ek_intermediates)
        if unsafe_accept_unendorsed_ek:
            log.warning("UNSAFE: hub.unsafe_accept_unendorsed_ek is on: TPM attestation keys are certified "
                        "against endorsement keys without a manufacturer certificate chain")

    def record_endorsement_key(self, device_id: str, ek_public: bytes, ek_certificate: bytes = b"") -> None:
        """Record the device's TPM endorsement key (marshalled ``TPM2B_PUBLIC``) and its certificate chain.

        A device with a recorded EK attests only with an AK certified
        against it; recording a new EK forgets the AK certified before. The
        chain (the EK certificate, DER, or a PEM bundle with the EK
        certificate first and its intermediates) is checked against the
        manufacturer roots when an AK is certified; here it must parse and
        certify this EK.

        Raises:
            UnknownDeviceError: no such device.
            KeyStoreError: not an EK public area.
            MalformedError: the chain does not parse (``malformed``) or
                certifies another key (``ek_certificate_mismatch``).
            ConfigError: (code ``tpm_unsupported``) the hub lacks TPM support.
        """
        self.devices.get_device(device_id)
        spki = _tpm().endorsement_key_spki(ek_public)
        if ek_certificate:
            leaf = load_ek_chain(ek_certificate)[0]
            if leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != spki:
                raise MalformedError("the EK certificate certifies another key", code="ek_certificate_mismatch")
        now = self.clock.now()
        self.store.set_endorsement_key(device_id, ek_public, now, ek_certificate)
        self._audit(device_id, {"status": "ek_recorded", "ek_sha256": hashlib.sha256(ek_public).hexdigest(),
                                "ek_certificate": bool(ek_certificate)})

    def _check_endorsed(self, device_id: str, endorsement: Endorsement, from_tpm: bytes = b"") -> None:
        """The EK's certificate chain ends at a configured manufacturer root (ADR 0812).

        The EK certificate is the one the device read from its TPM's NV
        (``from_tpm``, ADR 0815), else the chain the operator recorded
        explicitly with the EK; intermediates come from that chain and from
        ``hub.tpm_ek_intermediates``.

        Raises:
            AttestationError: (code ``ek_roots_not_configured``) no roots configured.
            IntegrityError: (code ``ek_certificate_untrusted``) no valid chain;
                (``ek_certificate_revoked``) a certificate on the path is on its
                issuer's CRL; (``ek_crl_invalid``, ``ek_crl_stale``) an issuer's
                CRL does not verify or is out of date (ADR 0814).
        """
        try:
            if not self.ek_roots:
                raise AttestationError("no TPM manufacturer roots configured (hub.tpm_ek_roots)",
                                       code="ek_roots_not_configured")
            recorded = load_ek_chain(endorsement.ek_certificate) if endorsement.ek_certificate else ()
            leaf = load_ek_chain(from_tpm)[:1] if from_tpm else recorded[:1]
            chain = (*leaf, *recorded[1:], *self.ek_intermediates) if leaf else ()
            verify_ek_certificate(chain, _tpm().endorsement_key_spki(endorsement.ek_public), self.ek_roots,
                                  self.clock.now(), self.ek_crls)
        except (AttestationError, IntegrityError, MalformedError) as exc:
            if exc.code in _REVOCATION_CODES:
                log.warning("AK certification of %s refused: %s (%s)", device_id, exc.code, exc)
                self._audit(device_id, {"status": "refused", "reasons": [exc.code]})
                raise
            if self.unsafe_accept_unendorsed_ek:
                log.warning("UNSAFE: EK of %s accepted without a valid manufacturer chain (%s: %s)",
                            device_id, exc.code, exc)
                return
            code = exc.code if exc.code == "ek_roots_not_configured" else "ek_certificate_untrusted"
            log.warning("AK certification of %s refused: %s (%s)", device_id, code, exc)
            self._audit(device_id, {"status": "refused", "reasons": [code]})
            if code == "ek_roots_not_configured":
                raise
            raise IntegrityError(str(exc), code="ek_certificate_untrusted") from None

    def handle(self, request: VerifiedRequest) -> dict[str, Any]:
        """A verified ``certify_ak`` device request: a credential for an empty secret, else its answer.

        Raises:
            AttestationError: (code ``no_endorsement_key``) no EK recorded for the device.
            MalformedError: the AK public area is not a proper AK.
            IntegrityError: (code ``ak_certification_failed``) the secret is not the credential's.
        """
        device_id = request.device_id
        area, secret = request.body["ak_public_area"], request.body["secret"]
        from_tpm = request.body["ek_certificate"]
        endorsement = self.store.endorsement(device_id)
        if endorsement is None:
            self._refuse(device_id, "no_endorsement_key")
            raise AttestationError("no endorsement key recorded for this device", code="no_endorsement_key")
        tpm = _tpm()
        try:
            key = tpm.attestation_key_of(area)
        except KeyStoreError:
            self._refuse(device_id, "not_an_attestation_key")
            raise MalformedError("not a restricted TPM attestation key") from None
        now = self.clock.now()
        if not secret:
            self._check_endorsed(device_id, endorsement, from_tpm)
            secret = secrets.token_bytes(CREDENTIAL_SECRET_BYTES)
            blob, encrypted = tpm.make_ak_credential(endorsement.ek_public, area, secret)
            self.store.purge_nonces(now)
            self.store.issue_nonce(device_id, _pending_entry(key, secret), now + self.credential_ttl)
            return {"credential_blob": blob.hex(), "encrypted_secret": encrypted.hex(),
                    "expires_in": int(self.credential_ttl.total_seconds())}
        if not self.store.take_nonce(device_id, _pending_entry(key, secret), now):
            self._refuse(device_id, "ak_certification_failed")
            raise IntegrityError("credential not activated by the TPM holding the device's EK and this AK",
                                 code="ak_certification_failed")
        if not self.store.certify_key(device_id, endorsement.ek_public, key, now):
            self._refuse(device_id, "ak_certification_failed")
            raise IntegrityError("the device's endorsement key changed during certification",
                                 code="ak_certification_failed")
        self._audit(device_id, {"status": "certified", "algorithm": key.algorithm.value,
                                "ak_sha256": hashlib.sha256(key.public_key).hexdigest()})
        return {"device_id": device_id, "certified": True}

    def _refuse(self, device_id: str, reason: str) -> None:
        log.warning("AK certification of %s refused: %s", device_id, reason)
        self._audit(device_id, {"status": "refused", "reasons": [reason]})

    def _audit(self, device_id: str, details: dict[str, Any]) -> None:
        now = self.clock.now()
        event = AuditEvent(EventType.ATTESTATION_KEY_CERTIFIED, now, "hub.attestation", device_id, details)
        self.outbox.enqueue([audit_message(event)], now)
