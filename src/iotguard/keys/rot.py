"""The ``RootOfTrust`` protocol: measurement registers, an attestation key, quotes.

A root of trust for reporting holds platform configuration registers (PCRs,
one SHA-256 bank) that can only be *extended* (``new = SHA-256(old ||
digest)``), never set; an **attestation key** (AK) that signs only through
the root of trust; and persistent monotonic counters for anti-rollback. A
**quote** is the AK's signature over the digest of selected PCRs and a
verifier nonce.

Backends: :class:`~iotguard.keys.software_rot.SoftwareRootOfTrust` (emulated
inside the software secure element) and :class:`~iotguard.keys.tpm.TpmRootOfTrust`
(a TPM 2.0 through ``tpm2-pytss``; tested against ``swtpm``). Both pass
``tests/keys/test_rot_contract.py``. PKCS#11 tokens and PUF stores are no
roots of trust: :func:`root_of_trust_of` raises
:class:`~iotguard.errors.RootOfTrustUnsupported` for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from iotguard.errors import KeyStoreError, RootOfTrustUnsupported

__all__ = [
    "PCR_COUNT",
    "PCR_DIGEST_SIZE",
    "AttestationKey",
    "AttestationKeyAlgorithm",
    "EndorsedRootOfTrust",
    "Quote",
    "QuoteFormat",
    "RootOfTrust",
    "check_pcr_selection",
    "extend_pcr",
    "pcr_composite_digest",
    "root_of_trust_of",
]

#: Number of PCRs in a bank (as in a PC-client TPM).
PCR_COUNT = 24
#: Size of a PCR (SHA-256 bank).
PCR_DIGEST_SIZE = 32


class AttestationKeyAlgorithm(StrEnum):
    """Signature algorithm of an attestation key, named as in COSE."""

    EDDSA = "EdDSA"  # Ed25519 (software root of trust)
    ES256 = "ES256"  # ECDSA P-256 with SHA-256 (TPM restricted signing key)


class QuoteFormat(StrEnum):
    """How a quote's signed bytes are structured."""

    SOFTWARE = "iotguard-sw-quote/1"  # CBOR array, see docs/wire.md
    TPM2 = "tpm2-quote"  # a marshalled TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE


@dataclass(frozen=True)
class AttestationKey:
    """Public half of an attestation key.

    Attributes:
        algorithm: Signature algorithm (COSE name).
        public_key: DER SubjectPublicKeyInfo.
    """

    algorithm: AttestationKeyAlgorithm
    public_key: bytes


@dataclass(frozen=True)
class Quote:
    """A signed statement of selected PCR values and a nonce.

    Attributes:
        format: Structure of :attr:`attest`.
        attest: The signed bytes (they contain the nonce and the PCR digest).
        signature: Raw signature over :attr:`attest` (Ed25519: 64 bytes;
            ES256: ``r || s``, 64 bytes).
        pcr_selection: The quoted PCR indices, ascending.
    """

    format: QuoteFormat
    attest: bytes
    signature: bytes
    pcr_selection: tuple[int, ...]


@runtime_checkable
class RootOfTrust(Protocol):
    """Measurement registers, an attestation key and quotes (software or TPM)."""

    @property
    def kind(self) -> str:
        """Stable name of the backend (``"software"``, ``"tpm2"``), reported in evidence."""
        ...

    def pcr_read(self, selection: Iterable[int]) -> dict[int, bytes]:
        """Current values of the selected PCRs.

        Raises:
            KeyStoreError: an index is out of range.
        """
        ...

    def pcr_extend(self, index: int, digest: bytes) -> None:
        """Extend PCR ``index`` with a SHA-256 ``digest``: ``new = SHA-256(old || digest)``.

        Raises:
            KeyStoreError: bad index or digest length.
        """
        ...

    def attestation_key(self) -> AttestationKey:
        """The attestation key's public half, creating the key on first use."""
        ...

    def quote(self, nonce: bytes, pcr_selection: Iterable[int]) -> Quote:
        """Sign the selected PCRs' composite digest and ``nonce`` with the attestation key.

        Raises:
            KeyStoreError: bad selection or nonce (1 to 64 bytes; 32 at most on a TPM).
        """
        ...

    def sign_evidence(self, to_be_signed: bytes) -> bytes:
        """Sign evidence (a COSE ``Sig_structure``) with the attestation key; raw signature."""
        ...

    def counter(self, name: str) -> int:
        """Current value of a persistent monotonic counter (0 if never used)."""
        ...

    def advance_counter(self, name: str, to_at_least: int) -> int:
        """Raise counter ``name`` to at least ``to_at_least``; returns the new value.

        A counter never goes down: a lower target leaves it unchanged.
        """
        ...


def check_pcr_selection(selection: Iterable[int]) -> tuple[int, ...]:
    """Validate and sort a PCR selection.

    Raises:
        KeyStoreError: empty, duplicated or out-of-range indices.
    """
    indices = tuple(selection)
    if not indices:
        raise KeyStoreError("a PCR selection must name at least one PCR")
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < PCR_COUNT:
            raise KeyStoreError(f"PCR index must be an integer 0..{PCR_COUNT - 1}")
    if len(set(indices)) != len(indices):
        raise KeyStoreError("a PCR selection must not repeat an index")
    return tuple(sorted(indices))


def extend_pcr(old: bytes, digest: bytes) -> bytes:
    """The extend operation of a SHA-256 PCR bank."""
    return hashlib.sha256(old + digest).digest()


def pcr_composite_digest(values: Mapping[int, bytes], selection: Iterable[int]) -> bytes:
    """SHA-256 over the selected PCR values in ascending index order (TPM ``pcrDigest``)."""
    h = hashlib.sha256()
    for index in sorted(selection):
        h.update(values[index])
    return h.digest()


def root_of_trust_of(store: object) -> RootOfTrust:
    """The root of trust a key store provides.

    A :class:`~iotguard.keys.software.SoftwareKeyStore` emulates one; a
    :class:`~iotguard.keys.tpm.TpmRootOfTrust` is one.

    Raises:
        RootOfTrustUnsupported: the store has no measurement registers,
            attestation key or quote (PKCS#11 tokens, PUF stores).
    """
    from iotguard.keys.software import SoftwareKeyStore
    from iotguard.keys.software_rot import SoftwareRootOfTrust

    if isinstance(store, RootOfTrust):
        return store
    if isinstance(store, SoftwareKeyStore):
        return SoftwareRootOfTrust(store)
    name = type(store).__name__
    raise RootOfTrustUnsupported(
        f"{name} is not a root of trust: it has no PCRs, attestation key or quote "
        "(use the TPM 2.0 backend or the software key store for measured boot and attestation)",
        code="rot_unsupported",
    )


@runtime_checkable
class EndorsedRootOfTrust(Protocol):
    """A root of trust with an endorsement key (a TPM): its AK is certified by credential activation (ADR 0810)."""

    def endorsement_key(self) -> bytes:
        """Marshalled public area of the endorsement key."""
        ...

    def attestation_key_public_area(self) -> bytes:
        """Marshalled public area of the attestation key."""
        ...

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """Recover a credential's secret (only where both the EK and the AK it names are resident)."""
        ...

    def endorsement_certificate(self) -> bytes:
        """The manufacturer's EK certificate (DER) as stored in the TPM's NV; ``b""`` if there is none."""
        ...
