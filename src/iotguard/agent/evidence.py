"""The attester: boot evidence answering a verifier's nonce.

:func:`produce_evidence` quotes the boot chain's PCRs with the nonce, puts the
quote, the event log and the device state in an EAT claims set
(:mod:`iotguard.wire.eat`) and has the root of trust's attestation key sign
it as a COSE_Sign1. A TPM quote keeps its own TPM signature (only it proves
the PCR values came from the TPM); a software quote is covered by the
token's signature, made by the same key in the same store.
"""

from __future__ import annotations

from datetime import datetime

from iotguard.agent.boot import BootRecord
from iotguard.keys.rot import QuoteFormat, RootOfTrust
from iotguard.wire.eat import EvidenceClaims, encode_evidence, event_log_digest, ueid_of

__all__ = ["produce_evidence"]


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
        nonce: The verifier's nonce (1..32 bytes on a TPM, 1..64 otherwise).
        now: Issue time (aware UTC).
        uptime: Seconds since boot.
        keystore_tamper: The key store's tamper reason (``""`` if untampered).

    Raises:
        KeyStoreError: the root of trust refused (bad nonce, tampered store).
    """
    ak = root.attestation_key()
    quote = root.quote(nonce, record.pcr_selection)
    claims = EvidenceClaims(
        nonce=nonce,
        issued_at=int(now.timestamp()),
        ueid=ueid_of(ak.public_key),
        uptime=uptime,
        firmware_version=record.firmware_version,
        event_log=record.events,
        event_log_digest=event_log_digest(record.events),
        pcr_selection=quote.pcr_selection,
        quote_format=quote.format.value,
        quote_attest=quote.attest,
        quote_signature=quote.signature if quote.format is QuoteFormat.TPM2 else b"",
        privacy_config_hash=record.privacy_config_hash,
        keystore_kind=root.kind,
        keystore_tamper=keystore_tamper,
    )
    return encode_evidence(claims, ak.algorithm.value, root.sign_evidence)
