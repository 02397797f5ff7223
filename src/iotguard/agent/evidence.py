"""The attester: boot evidence answering a verifier's nonce.

:func:`produce_evidence` puts the boot chain's event log and the device state
in an EAT claims set (:mod:`iotguard.wire.eat`) and signs it with the root of
trust's attestation key (:func:`sign_claims`):

* software root of trust: the token carries a software quote of the PCRs with
  the nonce, and the AK signs the token (EdDSA) in the same store;
* TPM: the token is **quote-signed** (ADR 0813): its signature is one
  ``TPM2_Quote`` whose qualifying data is SHA-256 of the token's COSE
  ``Sig_structure`` (which carries the nonce), so the TPM's one signature
  covers the PCRs and every claim.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from iotguard.agent.boot import BootRecord
from iotguard.keys.rot import QuoteFormat, RootOfTrust
from iotguard.wire.eat import TPM_QUOTE_ALGORITHM, EvidenceClaims, encode_evidence, event_log_digest, ueid_of

__all__ = ["produce_evidence", "quote_signed", "sign_claims"]


def quote_signed(root: RootOfTrust) -> bool:
    """Whether ``root`` signs evidence with a quote (a TPM) rather than carrying a quote in it."""
    return root.kind == "tpm2"


def sign_claims(root: RootOfTrust, claims: EvidenceClaims) -> bytes:
    """Encode and sign ``claims`` as the root of trust signs evidence.

    A TPM's signature is the quote of ``claims.pcr_selection`` qualified by
    SHA-256 of the ``Sig_structure``: ``r || s`` followed by the ``TPMS_ATTEST``.

    Raises:
        KeyStoreError: the root of trust refused.
    """
    if not quote_signed(root):
        return encode_evidence(claims, root.attestation_key().algorithm.value, root.sign_evidence)

    def quote_over(to_be_signed: bytes) -> bytes:
        quote = root.quote(hashlib.sha256(to_be_signed).digest(), claims.pcr_selection)
        return quote.signature + quote.attest

    return encode_evidence(claims, TPM_QUOTE_ALGORITHM, quote_over)


def produce_evidence(
    root: RootOfTrust,
    record: BootRecord,
    nonce: bytes,
    *,
    now: datetime,
    uptime: int,
    keystore_tamper: str = "",
) -> bytes:
    """Signed boot evidence for ``nonce``.

    Args:
        root: The root of trust that measured the boot.
        record: What the boot ran (:meth:`~iotguard.agent.boot.MeasuredBoot.boot`).
        nonce: The verifier's nonce (8..64 bytes, as the EAT nonce claim).
        now: Issue time (aware UTC).
        uptime: Seconds since boot.
        keystore_tamper: The key store's tamper reason (``""`` if untampered).

    Raises:
        KeyStoreError: the root of trust refused (bad nonce, tampered store).
    """
    ak = root.attestation_key()
    if quote_signed(root):
        selection, attest = record.pcr_selection, b""
    else:
        quote = root.quote(nonce, record.pcr_selection)
        selection, attest = quote.pcr_selection, quote.attest
    claims = EvidenceClaims(
        nonce=nonce,
        issued_at=int(now.timestamp()),
        ueid=ueid_of(ak.public_key),
        uptime=uptime,
        firmware_version=record.firmware_version,
        event_log=record.events,
        event_log_digest=event_log_digest(record.events),
        pcr_selection=selection,
        quote_format=(QuoteFormat.TPM2 if quote_signed(root) else QuoteFormat.SOFTWARE).value,
        quote_attest=attest,
        quote_signature=b"",
        privacy_config_hash=record.privacy_config_hash,
        keystore_kind=root.kind,
        keystore_tamper=keystore_tamper,
    )
    return sign_claims(root, claims)
