"""Quotes and attestation-key signatures, checked without a TPM.

:func:`verify_signature` checks a raw signature of an attestation key
(EdDSA or ES256 ``r || s``). :func:`parse_quote` parses the signed bytes of a
quote strictly: a software quote (CBOR, ``docs/wire.md``) or a marshalled
``TPMS_ATTEST`` of type ``TPM_ST_ATTEST_QUOTE`` (TPM 2.0 Library, Part 2,
10.12.12) with one SHA-256 PCR bank.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key

from iotguard.errors import IntegrityError, MalformedError
from iotguard.keys.rot import PCR_COUNT, AttestationKey, AttestationKeyAlgorithm, QuoteFormat

__all__ = ["QuoteInfo", "parse_quote", "verify_signature"]

_TPM_GENERATED_VALUE = 0xFF544347
_TPM_ST_ATTEST_QUOTE = 0x8018
_TPM_ALG_SHA256 = 0x000B
_ECDSA = ec.ECDSA(hashes.SHA256())
_TPM_QUOTE_HEAD = struct.pack(">IH", _TPM_GENERATED_VALUE, _TPM_ST_ATTEST_QUOTE)
# Enum values read once: a member's ``.value`` is a Python-level descriptor in Python 3.11.
_SOFTWARE, _TPM2 = QuoteFormat.SOFTWARE.value, QuoteFormat.TPM2.value


class QuoteInfo(NamedTuple):
    """What a quote states (immutable; a named tuple is built per appraisal at a fraction of a frozen dataclass's cost).

    Attributes:
        nonce: The qualifying data (the verifier's nonce).
        pcr_selection: Quoted PCRs, ascending.
        pcr_digest: SHA-256 over the quoted PCR values in index order.
        reset_count: TPM reset count, or the software root's boot count.
    """

    nonce: bytes
    pcr_selection: tuple[int, ...]
    pcr_digest: bytes
    reset_count: int


@lru_cache(maxsize=4096)
def _verifier(der: bytes, algorithm: AttestationKeyAlgorithm) -> Callable[[bytes, bytes], None]:
    """The signature check of one attestation key: its DER parsed once per key, not per appraisal."""
    try:
        key = load_der_public_key(der)
    except ValueError:
        raise MalformedError("attestation key is not a DER public key", code="malformed_evidence") from None
    if algorithm is AttestationKeyAlgorithm.EDDSA and isinstance(key, Ed25519PublicKey):
        return key.verify
    if algorithm is AttestationKeyAlgorithm.ES256 and isinstance(key, ec.EllipticCurvePublicKey):
        ecdsa = key

        def verify_es256(signature: bytes, data: bytes) -> None:
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            ecdsa.verify(encode_dss_signature(r, s), data, _ECDSA)

        return verify_es256
    raise MalformedError("attestation key must be Ed25519 (EdDSA) or ECDSA P-256 (ES256)", code="malformed_evidence")


def verify_signature(key: AttestationKey, algorithm: str, data: bytes, signature: bytes) -> None:
    """Check a raw attestation-key signature over ``data``.

    Raises:
        IntegrityError: (code ``bad_signature``) the algorithm is not the
            key's, or the signature does not verify.
        MalformedError: (code ``malformed_evidence``) the key is not a key of its algorithm.
    """
    # The algorithm is a StrEnum: it compares as its value.
    if algorithm != key.algorithm or len(signature) != 64:
        raise IntegrityError("signature algorithm is not the attestation key's", code="bad_signature")
    try:
        _verifier(key.public_key, key.algorithm)(signature, data)
    except InvalidSignature:
        raise IntegrityError("attestation-key signature did not verify", code="bad_signature") from None


def _malformed(reason: str) -> MalformedError:
    return MalformedError(f"quote: {reason}", code="malformed_quote")


def _software(attest: bytes) -> QuoteInfo:
    try:
        raw = cbor2.loads(attest)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
        raise _malformed("not CBOR") from None
    if not isinstance(raw, list) or len(raw) != 5 or raw[0] != _SOFTWARE:
        raise _malformed("not an iotguard-sw-quote/1 array")
    _, nonce, selection, digest, boot_count = raw
    if not isinstance(nonce, bytes) or not isinstance(digest, bytes) or len(digest) != 32:
        raise _malformed("nonce or digest has the wrong type")
    if not isinstance(selection, list) or not all(type(i) is int and 0 <= i < PCR_COUNT for i in selection):
        raise _malformed("bad PCR selection")
    if type(boot_count) is not int or boot_count < 0:
        raise _malformed("bad boot count")
    return QuoteInfo(nonce, tuple(selection), digest, boot_count)


_U16 = struct.Struct(">H")
# After the magic and type: the qualifiedSigner (TPM2B_NAME) and extraData sizes.
_SIGNER_AT, _HEAD_SIZE = 6, 8


@lru_cache(maxsize=64)
def _quote_layout(signer: int, extra: int) -> struct.Struct:
    """The rest of a quote's ``TPMS_ATTEST`` after its qualifiedSigner size, given its two sized fields' lengths.

    qualifiedSigner bytes (skipped), extraData size and bytes, clockInfo (clock
    u64 skipped, resetCount u32, restartCount u32 skipped, safe u8),
    firmwareVersion u64 (skipped), TPML_PCR_SELECTION with one bank (count
    u32, hash u16, sizeofSelect u8, 3-byte bitmap) and the PCR digest (size
    u16, 32 bytes). A fleet's TPMs produce few distinct (name, qualifying
    data) lengths: one layout each.
    """
    return struct.Struct(f">{signer}xH{extra}s8xI4xB8xIHB3sH32s")


def _tpm(attest: bytes) -> QuoteInfo:
    # Both sized fields are bounded and checked against what is left before use; the structure is then
    # one fixed layout whose size must be exactly the quote's, and each field is checked in it.
    size = len(attest)
    if size < _HEAD_SIZE or attest[:_SIGNER_AT] != _TPM_QUOTE_HEAD:
        raise _malformed("not a TPM-generated quote (magic or type)")
    (signer,) = _U16.unpack_from(attest, _SIGNER_AT)
    if signer > 66:
        raise _malformed("a sized field is too long")
    if _HEAD_SIZE + signer + 2 > size:
        raise _malformed("TPMS_ATTEST is truncated")
    (extra,) = _U16.unpack_from(attest, _HEAD_SIZE + signer)
    if extra > 64:
        raise _malformed("a sized field is too long")
    layout = _quote_layout(signer, extra)
    if _HEAD_SIZE + layout.size != size:
        raise _malformed("TPMS_ATTEST is truncated, has trailing bytes, or is not one SHA-256 bank of 3-byte selection")
    fields = layout.unpack_from(attest, _HEAD_SIZE)
    _, nonce, reset_count, safe, banks, bank, select_size, bitmap, digest_size, digest = fields
    if safe not in (0, 1):
        raise _malformed("clockInfo.safe is not a boolean")
    if banks != 1:
        raise _malformed("quote must select exactly one PCR bank")
    if bank != _TPM_ALG_SHA256:
        raise _malformed("quoted PCR bank is not SHA-256")
    if select_size != 3:
        raise _malformed("PCR bitmap must be 3 bytes")
    if digest_size != 32:
        raise _malformed("PCR digest must be 32 bytes")
    return QuoteInfo(nonce, _selection(int.from_bytes(bitmap, "little")), digest, reset_count)


@lru_cache(maxsize=256)
def _selection(bitmap: int) -> tuple[int, ...]:
    """The PCR indexes a 3-byte selection bitmap names, ascending (a fleet quotes few distinct selections)."""
    return tuple(i for i in range(PCR_COUNT) if bitmap >> i & 1)


def parse_quote(quote_format: str, attest: bytes) -> QuoteInfo:
    """Parse the signed bytes of a quote (signature not checked here).

    Raises:
        MalformedError: (code ``malformed_quote``) unknown format or bad structure.
    """
    if quote_format == _SOFTWARE:
        return _software(attest)
    if quote_format == _TPM2:
        return _tpm(attest)
    raise _malformed(f"unknown quote format {quote_format!r}")
