"""A root of trust emulated inside the software secure element.

The PCR bank lives in the :class:`~iotguard.keys.software.SoftwareKeyStore`'s
sealed file (so it is integrity-protected at rest and bound to the device like
the keys); the attestation key is an Ed25519 key in the same store; a quote is
the AK's signature over a CBOR structure holding the nonce, the selection, the
composite PCR digest and the boot count (``docs/wire.md``). The registers can
be extended, never set; :meth:`SoftwareRootOfTrust.power_cycle` stands in for
the platform reset that clears a TPM's PCRs.

This root of trust is as strong as the software store: code running with the
agent's privileges can extend registers and call the AK. Verifiers therefore
rate its hardware claim lower than a TPM's (see ``docs/attestation.md``).
"""

from __future__ import annotations

from collections.abc import Iterable

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from iotguard.errors import KeyStoreError
from iotguard.keys.keystore import KeyKind
from iotguard.keys.rot import (
    PCR_DIGEST_SIZE,
    AttestationKey,
    AttestationKeyAlgorithm,
    Quote,
    QuoteFormat,
    check_pcr_selection,
    extend_pcr,
    pcr_composite_digest,
)
from iotguard.keys.software import SoftwareKeyStore

__all__ = ["BOOT_COUNT_COUNTER", "DEFAULT_AK_LABEL", "SoftwareRootOfTrust", "check_nonce"]

#: Label of the attestation key inside the store.
DEFAULT_AK_LABEL = "iotguard/attestation-key"
#: Counter advanced by every power cycle (the quote reports it).
BOOT_COUNT_COUNTER = "iotguard/boot-count"
_ZERO = bytes(PCR_DIGEST_SIZE)
MAX_NONCE_BYTES = 64


def check_nonce(nonce: bytes, maximum: int = MAX_NONCE_BYTES) -> bytes:
    """Validate a verifier nonce (1 to ``maximum`` bytes).

    Raises:
        KeyStoreError: empty, too long or not bytes.
    """
    if not isinstance(nonce, bytes) or not 1 <= len(nonce) <= maximum:
        raise KeyStoreError(f"nonce must be 1 to {maximum} bytes")
    return nonce


class SoftwareRootOfTrust:
    """PCRs, attestation key and quotes inside a :class:`SoftwareKeyStore`.

    Args:
        store: The device's software secure element.
        ak_label: Label of the Ed25519 attestation key in ``store``.
    """

    kind = "software"

    def __init__(self, store: SoftwareKeyStore, *, ak_label: str = DEFAULT_AK_LABEL) -> None:
        self._store = store
        self._ak_label = ak_label

    def __repr__(self) -> str:
        return f"SoftwareRootOfTrust({self._store!r})"

    def pcr_read(self, selection: Iterable[int]) -> dict[int, bytes]:
        """Current values of the selected PCRs (all zero after a power cycle).

        Raises:
            KeyStoreError: an index is out of range.
        """
        indices = check_pcr_selection(selection)
        bank = self._store._read_registers()
        return {i: bank.get(i, _ZERO) for i in indices}

    def pcr_extend(self, index: int, digest: bytes) -> None:
        """Extend PCR ``index`` with a SHA-256 digest, durably.

        Raises:
            KeyStoreError: bad index or digest length.
        """
        (index,) = check_pcr_selection([index])
        if not isinstance(digest, bytes) or len(digest) != PCR_DIGEST_SIZE:
            raise KeyStoreError(f"a PCR extend takes a {PCR_DIGEST_SIZE}-byte SHA-256 digest")
        bank = self._store._read_registers()
        bank[index] = extend_pcr(bank.get(index, _ZERO), digest)
        self._store._write_registers(bank)

    def power_cycle(self) -> None:
        """Emulate a platform reset: every PCR back to zero, boot count + 1."""
        self._store.advance_counter(BOOT_COUNT_COUNTER, self._store.counter(BOOT_COUNT_COUNTER) + 1)
        self._store._write_registers({})

    def attestation_key(self) -> AttestationKey:
        """The Ed25519 attestation key, created in the store on first use."""
        if self._store.has_key(self._ak_label):
            raw = self._store.public_key(self._ak_label)
        else:
            raw = self._store.generate(self._ak_label, KeyKind.ED25519)
        der = Ed25519PublicKey.from_public_bytes(raw).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return AttestationKey(AttestationKeyAlgorithm.EDDSA, der)

    def quote(self, nonce: bytes, pcr_selection: Iterable[int]) -> Quote:
        """Sign ``["iotguard-sw-quote/1", nonce, selection, pcr_digest, boot_count]``.

        Raises:
            KeyStoreError: bad selection or nonce.
        """
        check_nonce(nonce)
        indices = check_pcr_selection(pcr_selection)
        self.attestation_key()
        values = self.pcr_read(indices)
        attest = cbor2.dumps(
            [
                QuoteFormat.SOFTWARE.value,
                nonce,
                list(indices),
                pcr_composite_digest(values, indices),
                self._store.counter(BOOT_COUNT_COUNTER),
            ]
        )
        return Quote(QuoteFormat.SOFTWARE, attest, self._store.sign(self._ak_label, attest), indices)

    def sign_evidence(self, to_be_signed: bytes) -> bytes:
        """Ed25519 signature of the attestation key over a COSE ``Sig_structure``."""
        self.attestation_key()
        return self._store.sign(self._ak_label, to_be_signed)

    def counter(self, name: str) -> int:
        """Current value of the store's monotonic counter ``name``."""
        return self._store.counter(name)

    def advance_counter(self, name: str, to_at_least: int) -> int:
        """Raise the store's counter ``name`` to at least ``to_at_least``."""
        return self._store.advance_counter(name, to_at_least)
