"""Boot evidence as an Entity Attestation Token (RFC 9711) in a COSE_Sign1.

The token is a tagged COSE_Sign1 (RFC 9052, tag 18) whose protected header
names the attestation key's algorithm (EdDSA or ES256) and whose payload is a
deterministically encoded CBOR claims map (``docs/wire.md`` lists every byte).
Standard EAT claims carry the nonce, issue time, UEID, uptime, profile and
software version; private-use claims (negative keys) carry the event log,
its digest, the quote and the key-store state.

:func:`encode_evidence` builds the token with ``pycose`` and a signer
callable (the root of trust's attestation key). :func:`decode_evidence`
parses untrusted bytes strictly — size limits first, then one schema, one
reason code per rejection — and returns the claims with the exact bytes the
signature covers; it does **not** check the signature (the verifier does,
against the key bound to the device).

TPM evidence is **quote-signed** (ADR 0813): its protected header names the
private-use algorithm :data:`TPM_QUOTE_ALGORITHM` (COSE alg -75100) and its
signature field is ``r || s`` (64 bytes) followed by the marshalled
``TPMS_ATTEST`` of a ``TPM2_Quote`` whose qualifying data is SHA-256 of the
token's ``Sig_structure``: the TPM's one signature covers both the PCRs and
the claims.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import cbor2
from pycose.algorithms import CoseAlgorithm
from pycose.headers import Algorithm
from pycose.messages.sign1message import Sign1Message

from iotguard.errors import MalformedError

__all__ = [
    "CLAIM_EVENT_LOG",
    "CLAIM_EVENT_LOG_DIGEST",
    "CLAIM_KEYSTORE_KIND",
    "CLAIM_KEYSTORE_TAMPER",
    "CLAIM_PCR_SELECTION",
    "CLAIM_PRIVACY_CONFIG_HASH",
    "CLAIM_QUOTE",
    "EAT_PROFILE",
    "MAX_EVENT_LOG_ENTRIES",
    "MAX_EVIDENCE_BYTES",
    "TPM_QUOTE_ALGORITHM",
    "BootEvent",
    "Evidence",
    "EvidenceClaims",
    "decode_evidence",
    "encode_evidence",
    "event_log_digest",
    "ueid_of",
]

#: Largest token accepted (bytes).
MAX_EVIDENCE_BYTES = 16 * 1024
#: Most event-log entries accepted.
MAX_EVENT_LOG_ENTRIES = 64
#: The EAT profile this token follows (claim 265).
EAT_PROFILE = "tag:iotguard.dev,2026:eat-boot/1"

# Registered EAT / CWT claim keys (IANA CWT Claims registry).
_IAT = 6
_NONCE = 10
_UEID = 256
_UPTIME = 261
_PROFILE = 265
_SWVERSION = 271
# Private-use claim keys of this profile (negative integers).
CLAIM_EVENT_LOG = -75000
CLAIM_EVENT_LOG_DIGEST = -75001
CLAIM_PCR_SELECTION = -75002
CLAIM_QUOTE = -75003
CLAIM_PRIVACY_CONFIG_HASH = -75004
CLAIM_KEYSTORE_KIND = -75005
CLAIM_KEYSTORE_TAMPER = -75006

#: The private-use COSE algorithm of quote-signed TPM evidence (RFC 9053 private use: below -65536).
TPM_QUOTE_ALGORITHM = "TPM2-Quote-ES256"
_TPM_QUOTE_ALG_ID = -75100
# The only protected headers accepted, byte for byte: {1: -8}, {1: -7} and {1: -75100}.
_PROTECTED = {
    b"\xa1\x01\x27": "EdDSA",
    b"\xa1\x01\x26": "ES256",
    b"\xa1\x01\x3a\x00\x01\x25\x5b": TPM_QUOTE_ALGORITHM,
}
_COSE_ALG = {"EdDSA": -8, "ES256": -7, TPM_QUOTE_ALGORITHM: _TPM_QUOTE_ALG_ID}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:/-]{0,63}")
_KEYS = frozenset(
    {
        _IAT,
        _NONCE,
        _UEID,
        _UPTIME,
        _PROFILE,
        _SWVERSION,
        CLAIM_EVENT_LOG,
        CLAIM_EVENT_LOG_DIGEST,
        CLAIM_PCR_SELECTION,
        CLAIM_QUOTE,
        CLAIM_PRIVACY_CONFIG_HASH,
        CLAIM_KEYSTORE_KIND,
        CLAIM_KEYSTORE_TAMPER,
    }
)
_MAX_TIMESTAMP = 253_402_300_799
# The claim keys in deterministic order (cbor2's canonical order, as encode_evidence writes them).
_KEY_ORDER = tuple(cbor2.loads(cbor2.dumps(dict.fromkeys(_KEYS, 0), canonical=True)))
_ARRAY = (list, tuple)  # cbor2 decodes arrays inside tags and map keys as tuples
_MAX_QUOTE_BYTES = 2048
_RAW_SIGNATURE_BYTES = 64
_SIGNED_QUOTE_MAX = _RAW_SIGNATURE_BYTES + _MAX_QUOTE_BYTES


class _TpmQuoteEs256(CoseAlgorithm):
    """The private-use algorithm in the protected header (pycose only writes its identifier; never registered)."""

    identifier = _TPM_QUOTE_ALG_ID
    fullname = TPM_QUOTE_ALGORITHM


@dataclass(frozen=True, slots=True)
class BootEvent:
    """One measured-boot event-log entry: what was extended into which PCR.

    Attributes:
        pcr: PCR index extended.
        digest: SHA-256 of the stage's image (the value extended).
        stage: Stage name (``bootloader``, ``kernel``, ...).
        version: Version the stage's signed manifest claims (``""`` if it had none).
    """

    pcr: int
    digest: bytes
    stage: str
    version: str

    def to_cbor(self) -> list[object]:
        return [self.pcr, self.digest, self.stage, self.version]


def event_log_digest(events: Sequence[BootEvent]) -> bytes:
    """SHA-256 of the deterministic CBOR encoding of the event log."""
    return hashlib.sha256(cbor2.dumps([e.to_cbor() for e in events], canonical=True)).digest()


def ueid_of(ak_public_key: bytes) -> bytes:
    """UEID of a device: type 0x01 (random) followed by SHA-256 of its AK's SubjectPublicKeyInfo."""
    return b"\x01" + hashlib.sha256(ak_public_key).digest()


@dataclass(frozen=True, slots=True)
class EvidenceClaims:
    """The claims set of a boot-evidence token.

    Attributes:
        nonce: The verifier's nonce (claim 10).
        issued_at: POSIX seconds when the evidence was made (claim 6).
        ueid: Universal entity id (claim 256): :func:`ueid_of` the AK.
        uptime: Seconds since boot (claim 261).
        firmware_version: Software version (claim 271).
        event_log: Measured-boot events, in extend order.
        event_log_digest: SHA-256 of the event log (:func:`event_log_digest`).
        pcr_selection: PCRs the quote covers, ascending.
        quote_format: Format of the quote (``iotguard-sw-quote/1`` or ``tpm2-quote``).
        quote_attest: The quote's signed bytes (software root of trust), or
            ``b""`` in quote-signed TPM evidence (the quote is the token's signature).
        quote_signature: Always ``b""`` in evidence a verifier accepts: the
            token's signature covers a software quote, and *is* a TPM quote.
        privacy_config_hash: SHA-256 of the privacy configuration in force.
        keystore_kind: Root-of-trust backend (``software``, ``tpm2``).
        keystore_tamper: The key store's tamper reason, ``""`` if none.
    """

    nonce: bytes
    issued_at: int
    ueid: bytes
    uptime: int
    firmware_version: str
    event_log: tuple[BootEvent, ...]
    event_log_digest: bytes
    pcr_selection: tuple[int, ...]
    quote_format: str
    quote_attest: bytes
    quote_signature: bytes
    privacy_config_hash: bytes
    keystore_kind: str
    keystore_tamper: str

    def to_cbor(self) -> dict[int, object]:
        return {
            _NONCE: self.nonce,
            _IAT: self.issued_at,
            _UEID: self.ueid,
            _UPTIME: self.uptime,
            _PROFILE: EAT_PROFILE,
            _SWVERSION: [self.firmware_version],
            CLAIM_EVENT_LOG: [e.to_cbor() for e in self.event_log],
            CLAIM_EVENT_LOG_DIGEST: self.event_log_digest,
            CLAIM_PCR_SELECTION: list(self.pcr_selection),
            CLAIM_QUOTE: [self.quote_format, self.quote_attest, self.quote_signature],
            CLAIM_PRIVACY_CONFIG_HASH: self.privacy_config_hash,
            CLAIM_KEYSTORE_KIND: self.keystore_kind,
            CLAIM_KEYSTORE_TAMPER: self.keystore_tamper,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    """A decoded token: its claims, its algorithm, and what its signature covers.

    Attributes:
        claims: The claims set.
        algorithm: ``"EdDSA"``, ``"ES256"`` or :data:`TPM_QUOTE_ALGORITHM`
            (from the protected header).
        to_be_signed: The COSE ``Sig_structure`` bytes the signature is over
            (for a quote-signed token: whose SHA-256 the quote must carry).
        signature: The raw signature (``r || s`` for ES256 and quote-signed tokens).
        event_log_sha256: SHA-256 of the event log as encoded in the token
            (deterministic CBOR, checked): what the event-log digest claim
            must equal (:func:`event_log_digest` of ``claims.event_log``).
        signed_attest: In a quote-signed token, the marshalled ``TPMS_ATTEST``
            the signature is over; ``b""`` otherwise.
    """

    claims: EvidenceClaims
    algorithm: str
    to_be_signed: bytes
    signature: bytes
    event_log_sha256: bytes = b""
    signed_attest: bytes = b""


def encode_evidence(claims: EvidenceClaims, algorithm: str, sign: Callable[[bytes], bytes]) -> bytes:
    """Encode and sign a token (tagged COSE_Sign1 around the deterministic claims map).

    Args:
        claims: The claims set.
        algorithm: ``"EdDSA"`` or ``"ES256"``: the attestation key's algorithm;
            or :data:`TPM_QUOTE_ALGORITHM` for quote-signed TPM evidence.
        sign: Signs the COSE ``Sig_structure``; returns the raw signature
            (quote-signed: ``r || s`` of the quote followed by its ``TPMS_ATTEST``).

    Raises:
        MalformedError: an unknown algorithm.
    """
    if algorithm not in _COSE_ALG:
        raise MalformedError(f"unsupported evidence algorithm {algorithm!r}")
    payload = cbor2.dumps(claims.to_cbor(), canonical=True)
    if algorithm == TPM_QUOTE_ALGORITHM:
        # pycose knows only registered algorithms; the header is set as pycose would store it.
        message = Sign1Message(payload=payload)
        message._phdr = {Algorithm: _TpmQuoteEs256}
    else:
        message = Sign1Message(phdr={Algorithm: _COSE_ALG[algorithm]}, payload=payload)
    message.signature = sign(message._create_sig_structure())
    encoded: bytes = message.encode(tag=True, sign=False)
    return encoded


def _fail(reason: str) -> MalformedError:
    return MalformedError(f"evidence: {reason}", code="malformed_evidence")


def _bytes(value: object, what: str, *, size: int | None = None, minimum: int = 0, maximum: int = 64) -> bytes:
    if type(value) is not bytes:
        raise _fail(f"{what} must be a byte string")
    if (size is not None and len(value) != size) or not minimum <= len(value) <= maximum:
        raise _fail(f"{what} has the wrong length")
    return value


def _uint(value: object, what: str, maximum: int) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        raise _fail(f"{what} must be an integer 0..{maximum}")
    return value


@lru_cache(maxsize=1024)
def _is_name(value: str) -> bool:
    # Names repeat from token to token (stages, versions, formats): matched once per distinct string.
    return _NAME.fullmatch(value) is not None


def _name(value: object, what: str, *, empty: bool = False) -> str:
    if type(value) is not str or not (_is_name(value) or (empty and value == "")):
        raise _fail(f"{what} must be a short name")
    return value


def _entry(entry: object) -> tuple[int, bytes, str, str]:
    """One event-log entry's types checked (``[pcr, digest, stage, version]``), as a hashable tuple."""
    if not isinstance(entry, _ARRAY) or len(entry) != 4:
        raise _fail("event-log entry must be [pcr, digest, stage, version]")
    pcr, digest, stage, version = entry
    if type(pcr) is not int or type(digest) is not bytes or type(stage) is not str or type(version) is not str:
        raise _fail("event-log entry must be [uint, bytes, text, text]")
    return pcr, digest, stage, version


@lru_cache(maxsize=256)
def _event_log(entries: tuple[tuple[int, bytes, str, str], ...]) -> tuple[tuple[BootEvent, ...], bytes]:
    """The events of a log whose entries' types are checked, and SHA-256 of the log's deterministic encoding.

    A fleet boots few releases: the same event log arrives from every device
    at every appraisal, so each distinct log is checked, built and hashed
    once. Refusals are not cached (an exception is not a result); a
    BootEvent is immutable. The digest is of the bytes as received: the
    caller has checked that the claims map is the deterministic encoding of
    what it decoded, and the log is one of its values.
    """
    events = []
    for pcr, digest, stage, version in entries:
        if not 0 <= pcr <= 23:
            raise _fail("event pcr must be an integer 0..23")
        if len(digest) != 32:
            raise _fail("event digest has the wrong length")
        events.append(BootEvent(pcr, digest, _name(stage, "event stage"), _name(version, "event version", empty=True)))
    return tuple(events), hashlib.sha256(cbor2.dumps(entries)).digest()


def _claims(payload: bytes) -> tuple[EvidenceClaims, bytes]:
    try:
        raw = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
        raise _fail("claims are not CBOR") from None
    if type(raw) is not dict or tuple(raw) != _KEY_ORDER:
        raise _fail("claims map does not have exactly the claims of the profile, in deterministic order")
    # With the keys in deterministic order, re-encoding the map as decoded (cbor2 always writes the
    # shortest heads and definite lengths) gives the payload back exactly when the payload is the
    # deterministic encoding: the schema below admits no maps, floats or tags inside. A duplicate key
    # decodes to a map with fewer entries, which re-encodes shorter.
    try:
        reencoded = cbor2.dumps(raw)
    except (cbor2.CBOREncodeError, ValueError, TypeError, RecursionError):
        raise _fail("claims cannot be re-encoded") from None
    if reencoded != payload:
        raise _fail("claims are not deterministically encoded")
    if raw[_PROFILE] != EAT_PROFILE:
        raise _fail("unknown EAT profile")
    version = raw[_SWVERSION]
    if not isinstance(version, _ARRAY) or len(version) != 1:
        raise _fail("swversion must be [version]")
    log = raw[CLAIM_EVENT_LOG]
    if not isinstance(log, _ARRAY) or not 1 <= len(log) <= MAX_EVENT_LOG_ENTRIES:
        raise _fail(f"event log must have 1..{MAX_EVENT_LOG_ENTRIES} entries")
    events, log_sha256 = _event_log(tuple(map(_entry, log)))
    selection = raw[CLAIM_PCR_SELECTION]
    if not isinstance(selection, _ARRAY) or not 1 <= len(selection) <= 24:
        raise _fail("PCR selection must list 1..24 PCRs")
    pcrs = tuple(selection)
    if not all(type(i) is int for i in pcrs) or list(pcrs) != sorted(set(pcrs)) or not 0 <= pcrs[0] <= pcrs[-1] <= 23:
        raise _fail("PCR selection must be ascending PCR indexes 0..23 without repeats")
    quote = raw[CLAIM_QUOTE]
    if not isinstance(quote, _ARRAY) or len(quote) != 3:
        raise _fail("quote must be [format, attest, signature]")
    claims = EvidenceClaims(
        nonce=_bytes(raw[_NONCE], "nonce", minimum=8),  # RFC 9711: 8 to 64 bytes
        issued_at=_uint(raw[_IAT], "iat", _MAX_TIMESTAMP),
        ueid=_bytes(raw[_UEID], "ueid", size=33),
        uptime=_uint(raw[_UPTIME], "uptime", 2**32 - 1),
        firmware_version=_name(version[0], "firmware version"),
        event_log=events,
        event_log_digest=_bytes(raw[CLAIM_EVENT_LOG_DIGEST], "event-log digest", size=32),
        pcr_selection=pcrs,
        quote_format=_name(quote[0], "quote format"),
        quote_attest=_bytes(quote[1], "quote attest", maximum=_MAX_QUOTE_BYTES),
        quote_signature=_bytes(quote[2], "quote signature", maximum=_MAX_QUOTE_BYTES),
        privacy_config_hash=_bytes(raw[CLAIM_PRIVACY_CONFIG_HASH], "privacy-configuration hash", size=32),
        keystore_kind=_name(raw[CLAIM_KEYSTORE_KIND], "key-store kind"),
        keystore_tamper=_name(raw[CLAIM_KEYSTORE_TAMPER], "key-store tamper state", empty=True),
    )
    return claims, log_sha256


def _bstr_head(length: int) -> bytes:
    if length < 24:
        return bytes((0x40 | length,))
    if length < 0x100:
        return bytes((0x58, length))
    return b"\x59" + length.to_bytes(2, "big")  # MAX_EVIDENCE_BYTES < 65536


# Sig_structure = ["Signature1", protected, external_aad = b"", payload] (RFC 9052, 4.4):
# everything before the payload is fixed once the protected header is.
_SIG1_PREFIX = {p: b"\x84" + cbor2.dumps(Sign1Message.context) + cbor2.dumps(p) + b"\x40" for p in _PROTECTED}


def decode_evidence(token: bytes) -> Evidence:
    """Parse a token strictly (signature **not** checked).

    Raises:
        MalformedError: (code ``malformed_evidence``) too large, not a tagged
            COSE_Sign1, unknown algorithm, unprotected headers present, or a
            claims set outside the profile.
    """
    if not isinstance(token, bytes) or not 0 < len(token) <= MAX_EVIDENCE_BYTES:
        raise _fail(f"token must be 1..{MAX_EVIDENCE_BYTES} bytes")
    try:
        outer = cbor2.loads(token)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
        raise _fail("token is not CBOR") from None
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != Sign1Message.cbor_tag:
        raise _fail("token is not a tagged COSE_Sign1")
    body = outer.value
    # cbor2 decodes a tag's content as an immutable tuple with frozendicts.
    if not isinstance(body, list | tuple) or len(body) != 4 or not isinstance(body[1], Mapping) or body[1]:
        raise _fail("COSE_Sign1 must be [protected, {}, payload, signature]")
    protected, _, payload, signature = body
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise _fail("protected header and payload must be byte strings")
    alg = _PROTECTED.get(protected)
    if alg is None:
        raise _fail("protected header must be exactly {1: -8} (EdDSA), {1: -7} (ES256) or {1: -75100} (TPM quote)")
    claims, log_sha256 = _claims(payload)
    attest = b""
    if alg == TPM_QUOTE_ALGORITHM:
        signature = _bytes(signature, "signature", minimum=_RAW_SIGNATURE_BYTES + 1, maximum=_SIGNED_QUOTE_MAX)
        signature, attest = signature[:_RAW_SIGNATURE_BYTES], signature[_RAW_SIGNATURE_BYTES:]
    return Evidence(
        claims=claims,
        algorithm=alg,
        to_be_signed=_SIG1_PREFIX[protected] + _bstr_head(len(payload)) + payload,
        signature=_bytes(signature, "signature", size=_RAW_SIGNATURE_BYTES),
        event_log_sha256=log_sha256,
        signed_attest=attest,
    )
