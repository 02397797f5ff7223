"""PUF authentication without stored responses and without challenge reuse.

Classic PUF authentication stores challenge-response pairs on the server and
spends each once: the server then holds raw responses (a database to steal)
and every spent pair is a training sample for a modelling attack. iotguard
instead turns the PUF into a signing key through the fuzzy extractor:

**Enrollment** (trusted, at manufacture; :func:`enroll_puf`): the device
majority-votes several power-up reads, runs the fuzzy extractor, derives an
Ed25519 key from the extracted key and hands the verifier only
``(device_id, helper_data, public_key)``. Raw responses never leave the device.

**Authentication** (:class:`PufVerifier`, :func:`answer_challenge`):

1. The verifier issues ``(sequence, nonce, helper_data)``: the sequence is
   strictly increasing per device (kept durably by the registry) and the
   nonce is 32 fresh random bytes, so a challenge is never reused.
2. The device reads its PUF once, reconstructs the key from the helper data,
   signs ``"iotguard-puf-auth-v1" || device_id || sequence || nonce ||
   SHA-256(helper_data)`` and forgets the key.
3. The verifier checks the signature against the enrolled public key, that
   the challenge is outstanding and not expired, and consumes it whatever the
   outcome. Replays, expired or forged answers raise.

The wire carries only nonces, public helper data and signatures: an
eavesdropper collects no challenge-response pairs to model.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotguard.clock import Clock, SystemClock
from iotguard.errors import AuthenticationError, KeyStoreError, ReplayError, UnknownDeviceError
from iotguard.keys.puf.enrollment import PufEnrollmentLimits, checked_enrollment_reference
from iotguard.keys.puf.fuzzy import FuzzyExtractor, HelperData
from iotguard.keys.puf.keystore import PufSource

__all__ = [
    "MemoryPufRegistry",
    "PufAuthResponse",
    "PufChallenge",
    "PufEnrollment",
    "PufRegistry",
    "PufVerifier",
    "answer_challenge",
    "enroll_puf",
]

_CONTEXT = b"iotguard puf auth"
_DOMAIN = b"iotguard-puf-auth-v1\0"
#: Default lifetime of an issued challenge.
DEFAULT_CHALLENGE_LIFETIME = timedelta(seconds=30)
#: Most challenges outstanding per device (older ones are dropped).
MAX_OUTSTANDING_PER_DEVICE = 8


@dataclass(frozen=True)
class PufEnrollment:
    """What the verifier stores per device: public values only."""

    device_id: str
    helper_data: bytes
    public_key: bytes


@dataclass(frozen=True)
class PufChallenge:
    """A single-use challenge."""

    device_id: str
    sequence: int
    nonce: bytes
    helper_data: bytes
    issued_at: datetime


@dataclass(frozen=True)
class PufAuthResponse:
    """The device's answer: a signature, nothing derived from raw PUF responses."""

    device_id: str
    sequence: int
    signature: bytes


def _transcript(device_id: str, sequence: int, nonce: bytes, helper_data: bytes) -> bytes:
    return (
        _DOMAIN
        + device_id.encode()
        + b"\0"
        + sequence.to_bytes(8, "big")
        + nonce
        + hashlib.sha256(helper_data).digest()
    )


def _signing_key(key: bytes) -> Ed25519PrivateKey:
    seed = HKDF(hashes.SHA256(), 32, salt=None, info=b"iotguard puf auth ed25519").derive(key)
    return Ed25519PrivateKey.from_private_bytes(seed)


def enroll_puf(
    puf: PufSource, device_id: str, *, extractor: FuzzyExtractor | None = None, reads: int = 9,
    limits: PufEnrollmentLimits | None = None,
) -> PufEnrollment:
    """Enroll a device (runs on the device in the factory); returns only public values.

    Raises:
        PufQualityError: the PUF is biased enough that the helper data would
            expose the key, correlated, or too noisy (see
            :mod:`iotguard.keys.puf.enrollment`).
    """
    fe = extractor or FuzzyExtractor()
    if reads < 1 or reads % 2 == 0:
        raise ValueError("enrollment needs an odd number of reads")
    reference, _ = checked_enrollment_reference(np.stack([puf.read() for _ in range(reads)]), fe.params, limits)
    key, helper = fe.generate(reference, context=_CONTEXT + device_id.encode())
    public = _signing_key(key).public_key().public_bytes_raw()
    return PufEnrollment(device_id, helper.to_bytes(), public)


def answer_challenge(
    puf: PufSource, challenge: PufChallenge, *, extractor: FuzzyExtractor | None = None, attempts: int = 3
) -> PufAuthResponse:
    """Device side: reconstruct the key from one fresh read and sign the challenge.

    Raises:
        MalformedError: the helper data does not parse.
        KeyStoreError: the key cannot be reconstructed (wrong device, or PUF
            outside its specification).
    """
    fe = extractor or FuzzyExtractor()
    helper = HelperData.from_bytes(challenge.helper_data)
    context = _CONTEXT + challenge.device_id.encode()
    for _ in range(max(1, attempts)):
        try:
            key = fe.reproduce(puf.read(), helper, context=context)
            break
        except KeyStoreError:
            continue
    else:
        raise KeyStoreError("PUF key reconstruction failed (wrong device or PUF out of specification)")
    message = _transcript(challenge.device_id, challenge.sequence, challenge.nonce, challenge.helper_data)
    return PufAuthResponse(challenge.device_id, challenge.sequence, _signing_key(key).sign(message))


class PufRegistry(Protocol):
    """Durable verifier state (the hub store implements it)."""

    def enrollment(self, device_id: str) -> PufEnrollment | None:
        """The device's enrollment, or ``None``."""
        ...

    def next_sequence(self, device_id: str) -> int:
        """Durably increment and return the device's challenge sequence (never repeats)."""
        ...


class MemoryPufRegistry:
    """In-memory :class:`PufRegistry` for tests and the simulator."""

    def __init__(self) -> None:
        self._enrollments: dict[str, PufEnrollment] = {}
        self._sequences: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, enrollment: PufEnrollment) -> None:
        """Register an enrollment."""
        with self._lock:
            self._enrollments[enrollment.device_id] = enrollment

    def enrollment(self, device_id: str) -> PufEnrollment | None:
        with self._lock:
            return self._enrollments.get(device_id)

    def next_sequence(self, device_id: str) -> int:
        with self._lock:
            value = self._sequences.get(device_id, 0) + 1
            self._sequences[device_id] = value
            return value


class PufVerifier:
    """Verifier side of the PUF authentication protocol (pure: no I/O).

    Args:
        registry: Enrollments and durable challenge sequences.
        clock: Time source (system clock if ``None``).
        challenge_lifetime: How long an issued challenge may be answered.
    """

    def __init__(
        self,
        registry: PufRegistry,
        *,
        clock: Clock | None = None,
        challenge_lifetime: timedelta = DEFAULT_CHALLENGE_LIFETIME,
    ) -> None:
        self._registry = registry
        self._clock: Clock = clock or SystemClock()
        self._lifetime = challenge_lifetime
        self._outstanding: dict[str, dict[int, PufChallenge]] = {}
        self._lock = threading.Lock()

    def challenge(self, device_id: str, *, now: datetime | None = None) -> PufChallenge:
        """Issue a fresh single-use challenge.

        Raises:
            UnknownDeviceError: the device is not enrolled.
        """
        enrollment = self._registry.enrollment(device_id)
        if enrollment is None:
            raise UnknownDeviceError(f"no PUF enrollment for {device_id!r}")
        issued = PufChallenge(
            device_id=device_id,
            sequence=self._registry.next_sequence(device_id),
            nonce=secrets.token_bytes(32),
            helper_data=enrollment.helper_data,
            issued_at=now or self._clock.now(),
        )
        with self._lock:
            pending = self._outstanding.setdefault(device_id, {})
            pending[issued.sequence] = issued
            while len(pending) > MAX_OUTSTANDING_PER_DEVICE:
                del pending[min(pending)]
        return issued

    def verify(self, response: PufAuthResponse, *, now: datetime | None = None) -> None:
        """Check a device's answer; the challenge is consumed whatever the outcome.

        Raises:
            UnknownDeviceError: the device is not enrolled.
            ReplayError: no such outstanding challenge (never issued, already
                answered, or dropped) or it expired.
            AuthenticationError: the signature does not verify.
        """
        enrollment = self._registry.enrollment(response.device_id)
        if enrollment is None:
            raise UnknownDeviceError(f"no PUF enrollment for {response.device_id!r}")
        with self._lock:
            issued = self._outstanding.get(response.device_id, {}).pop(response.sequence, None)
        if issued is None:
            raise ReplayError("no outstanding challenge with this sequence")
        if (now or self._clock.now()) - issued.issued_at > self._lifetime:
            raise ReplayError("challenge expired")
        message = _transcript(issued.device_id, issued.sequence, issued.nonce, issued.helper_data)
        try:
            Ed25519PublicKey.from_public_bytes(enrollment.public_key).verify(response.signature, message)
        except (InvalidSignature, ValueError):
            raise AuthenticationError("PUF authentication signature did not verify") from None
