"""Quotes and attestation-key signatures, checked without a TPM.

:func:`verify_signature` checks a raw signature of an attestation key
(EdDSA or ES256 ``r || s``). :func:`parse_quote` parses the signed bytes of a
quote strictly: a software quote (CBOR, ``docs/wire.md``) or a marshalled
``TPMS_ATTEST`` of type ``TPM_ST_ATTEST_QUOTE`` (TPM 2.0 Library, Part 2,
10.12.12) with one SHA-256 PCR bank.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

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


@dataclass(frozen=True, slots=True)
class QuoteInfo:
    """What a quote states.

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
def _public_key(der: bytes) -> Ed25519PublicKey | ec.EllipticCurvePublicKey:
    key = load_der_public_key(der)
    if not isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise MalformedError("attestation key must be Ed25519 or ECDSA P-256", code="malformed_evidence")
    return key


def verify_signature(key: AttestationKey, algorithm: str, data: bytes, signature: bytes) -> None:
    """Check a raw attestation-key signature over ``data``.

    Raises:
        IntegrityError: (code ``bad_signature``) the algorithm is not the
            key's, or the signature does not verify.
    """
    if algorithm != key.algorithm.value or len(signature) != 64:
        raise IntegrityError("signature algorithm is not the attestation key's", code="bad_signature")
    public = _public_key(key.public_key)
    try:
        if key.algorithm is AttestationKeyAlgorithm.EDDSA and isinstance(public, Ed25519PublicKey):
            public.verify(signature, data)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            public.verify(der, data, _ECDSA)
        else:
            raise InvalidSignature
    except InvalidSignature:
        raise IntegrityError("attestation-key signature did not verify", code="bad_signature") from None


def _malformed(reason: str) -> MalformedError:
    return MalformedError(f"quote: {reason}", code="malformed_quote")


def _software(attest: bytes) -> QuoteInfo:
    try:
        raw = cbor2.loads(attest)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
        raise _malformed("not CBOR") from None
    if not isinstance(raw, list) or len(raw) != 5 or raw[0] != QuoteFormat.SOFTWARE.value:
        raise _malformed("not an iotguard-sw-quote/1 array")
    _, nonce, selection, digest, boot_count = raw
    if not isinstance(nonce, bytes) or not isinstance(digest, bytes) or len(digest) != 32:
        raise _malformed("nonce or digest has the wrong type")
    if not isinstance(selection, list) or not all(type(i) is int and 0 <= i < PCR_COUNT for i in selection):
        raise _malformed("bad PCR selection")
    if type(boot_count) is not int or boot_count < 0:
        raise _malformed("bad boot count")
    return QuoteInfo(nonce, tuple(selection), digest, boot_count)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise _malformed("TPMS_ATTEST is truncated")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        (value,) = struct.unpack(fmt, self.take(size))
        return int(value)

    def sized(self, maximum: int) -> bytes:
        size = self.u(">H")
        if size > maximum:
            raise _malformed("a sized field is too long")
        return self.take(size)


def _tpm(attest: bytes) -> QuoteInfo:
    r = _Reader(attest)
    if r.u(">I") != _TPM_GENERATED_VALUE or r.u(">H") != _TPM_ST_ATTEST_QUOTE:
        raise _malformed("not a TPM-generated quote (magic or type)")
    r.sized(66)  # qualifiedSigner (TPM2B_NAME)
    nonce = r.sized(64)  # extraData
    r.u(">Q")  # clockInfo.clock
    reset_count = r.u(">I")
    r.u(">I")  # restartCount
    if r.u(">B") not in (0, 1):  # safe
        raise _malformed("clockInfo.safe is not a boolean")
    r.u(">Q")  # firmwareVersion
    if r.u(">I") != 1:
        raise _malformed("quote must select exactly one PCR bank")
    if r.u(">H") != _TPM_ALG_SHA256:
        raise _malformed("quoted PCR bank is not SHA-256")
    bitmap = r.take(r.u(">B"))
    if len(bitmap) != 3:
        raise _malformed("PCR bitmap must be 3 bytes")
    selection = tuple(i for i in range(PCR_COUNT) if bitmap[i // 8] & (1 << (i % 8)))
    digest = r.sized(64)
    if len(digest) != 32 or r.at != len(attest):
        raise _malformed("PCR digest length or trailing bytes")
    return QuoteInfo(nonce, selection, digest, reset_count)


def parse_quote(quote_format: str, attest: bytes) -> QuoteInfo:
    """Parse the signed bytes of a quote (signature not checked here).

    Raises:
        MalformedError: (code ``malformed_quote``) unknown format or bad structure.
    """
    if quote_format == QuoteFormat.SOFTWARE.value:
        return _software(attest)
    if quote_format == QuoteFormat.TPM2.value:
        return _tpm(attest)
    raise _malformed(f"unknown quote format {quote_format!r}")
