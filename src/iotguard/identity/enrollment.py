"""Enrollment and re-keying protocol messages (pure logic, no I/O).

Enrollment (device -> hub, over the REST API):

1. The operator runs ``iotguard devices add``; the hub stores the SHA-256 of
   a random one-time secret with an expiry and prints an *enrollment code*
   ``iotguard-enroll:v1:<device_id>:<secret>:<ca_fingerprint>``, shown once.
2. The device generates its Ed25519 identity key and an X25519 key inside
   its key store and sends both public keys, the cipher suites it supports,
   the token hash, and a proof of possession: an Ed25519 signature over the
   request transcript.
3. The hub checks the token (exists, unused, unexpired, same device),
   verifies the proof, picks the first of the device's suites that the hub
   allows, makes an ephemeral X25519 key, derives the session keys, issues
   the operational certificate, and answers with a response signed by the
   fleet CA. The device checks that signature against the CA fingerprint in
   its enrollment code, so both sides are authenticated.

Re-keying moves a device to epoch ``n + 1`` (and optionally another suite)
with the same exchange, authenticated by the identity key instead of a
token.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotguard.channel import SessionKeys, session_info, split_session_keys
from iotguard.crypto import get_suite
from iotguard.errors import EnrollmentError, IntegrityError, MalformedError

__all__ = [
    "EnrollmentCode",
    "b64d",
    "b64e",
    "derive_hub_session",
    "hub_response_message",
    "negotiate_suite",
    "new_enrollment_secret",
    "parse_enrollment_code",
    "request_transcript",
    "session_salt",
    "token_hash",
    "verify_signature",
]

_CODE = re.compile(r"iotguard-enroll:v1:([A-Za-z0-9][A-Za-z0-9._-]{0,63}):([A-Za-z0-9_-]{43}):([0-9a-f]{64})")
MAX_SUITES = 8
MAX_CLOCK_SKEW_S = 300


def b64e(data: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str, *, what: str, length: int | None = None, max_length: int = 65536) -> bytes:
    """Decode URL-safe base64 (padding optional) strictly.

    Raises:
        MalformedError: not base64, or not the expected length.
    """
    if not isinstance(text, str) or len(text) > max_length * 2:
        raise MalformedError(f"{what}: expected base64 text")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise MalformedError(f"{what}: not valid base64") from None
    if length is not None and len(raw) != length:
        raise MalformedError(f"{what}: expected {length} bytes")
    return raw


@dataclass(frozen=True)
class EnrollmentCode:
    """What the operator hands to a device to enroll it."""

    device_id: str
    secret: bytes
    ca_fingerprint: str

    def __str__(self) -> str:
        return f"iotguard-enroll:v1:{self.device_id}:{b64e(self.secret)}:{self.ca_fingerprint}"

    def __repr__(self) -> str:
        return f"EnrollmentCode({self.device_id!r}, <secret>, {self.ca_fingerprint[:12]}...)"


def new_enrollment_secret() -> bytes:
    """A fresh 256-bit one-time enrollment secret."""
    return secrets.token_bytes(32)


def token_hash(secret: bytes) -> bytes:
    """What the hub stores for an enrollment secret."""
    return hashlib.sha256(b"iotguard-enroll-token-v1\x00" + secret).digest()


def parse_enrollment_code(code: str) -> EnrollmentCode:
    """Parse an enrollment code.

    Raises:
        MalformedError: not an enrollment code.
    """
    m = _CODE.fullmatch(code.strip())
    if not m:
        raise MalformedError("not an iotguard enrollment code")
    return EnrollmentCode(m.group(1), b64d(m.group(2), what="secret", length=32), m.group(3))


def request_transcript(kind: str, fields: dict[str, Any]) -> bytes:
    """Canonical bytes a request or response signature covers."""
    return f"iotguard-{kind}-v1\x00".encode() + cbor2.dumps(fields, canonical=True)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Verify an Ed25519 signature.

    Raises:
        IntegrityError: the signature does not verify.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise IntegrityError("signature does not verify") from None


def negotiate_suite(device_suites: list[str], hub_allowed: list[str]) -> str:
    """First suite in the device's preference order that the hub allows.

    Raises:
        EnrollmentError: no common suite.
    """
    if not device_suites or len(device_suites) > MAX_SUITES:
        raise EnrollmentError("device must offer 1-8 cipher suites")
    for s in device_suites:
        if s in hub_allowed:
            get_suite(s)
            return s
    raise EnrollmentError("no cipher suite in common with the hub")


def session_salt(transcript: bytes, hub_kex_public: bytes) -> bytes:
    """HKDF salt binding the session keys to the whole exchange."""
    return hashlib.sha256(transcript + hub_kex_public).digest()


def derive_hub_session(
    device_id: str, epoch: int, suite_name: str, device_kex_public: bytes, transcript: bytes
) -> tuple[bytes, SessionKeys]:
    """Hub side of the key agreement: returns (hub ephemeral public key, session keys).

    Raises:
        EnrollmentError: the device's X25519 key is invalid.
    """
    suite = get_suite(suite_name)
    eph = X25519PrivateKey.generate()
    hub_pub = eph.public_key().public_bytes_raw()
    try:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(device_kex_public))
    except ValueError:
        raise EnrollmentError("invalid X25519 public key") from None
    material = HKDF(
        hashes.SHA256(), suite.key_size + 32, salt=session_salt(transcript, hub_pub),
        info=session_info(device_id, epoch, suite_name),
    ).derive(shared)
    return hub_pub, split_session_keys(material, suite.key_size)


def hub_response_message(transcript: bytes, fields: dict[str, Any]) -> bytes:
    """Bytes the CA signs in an enrollment or re-key response."""
    return request_transcript("hub-response", {"req": hashlib.sha256(transcript).digest(), **fields})
