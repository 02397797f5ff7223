"""AEAD cipher suites behind one interface, and the suite registry.

Callers never name a concrete cipher: they look a suite up by its wire name
(``get_suite("chacha20-poly1305")``) and call :meth:`AeadSuite.seal`,
:meth:`AeadSuite.open` or :meth:`AeadSuite.open_batch`. New suites (Ascon)
register themselves with :func:`register_suite` and need no change anywhere
else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from iotguard.errors import ConfigError, IntegrityError

__all__ = [
    "AeadSuite",
    "AesGcmSuite",
    "ChaCha20Poly1305Suite",
    "OpenRequest",
    "get_suite",
    "register_suite",
    "suite_names",
]


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """One envelope to open in a batch."""

    key: bytes
    nonce: bytes
    associated_data: bytes
    ciphertext: bytes


@runtime_checkable
class AeadSuite(Protocol):
    """An authenticated-encryption suite.

    Attributes:
        name: Wire name, e.g. ``"chacha20-poly1305"``.
        suite_id: Small integer carried in the envelope (see docs/wire.md).
        key_size: Key length in bytes.
        nonce_size: Nonce length in bytes.
        tag_size: Tag length in bytes (appended to the ciphertext).
        max_messages: Messages that may be sealed under one key before the
            device must re-key (a usage limit well inside the suite's bound).
    """

    name: str
    suite_id: int
    key_size: int
    nonce_size: int
    tag_size: int
    max_messages: int

    def seal(self, key: bytes, nonce: bytes, associated_data: bytes, plaintext: bytes) -> bytes:
        """Encrypt and authenticate; returns ciphertext with the tag appended."""
        ...

    def open(self, key: bytes, nonce: bytes, associated_data: bytes, ciphertext: bytes) -> bytes:
        """Verify and decrypt.

        Raises:
            IntegrityError: the tag does not verify; no plaintext is released.
        """
        ...

    def open_batch(self, requests: Sequence[OpenRequest]) -> list[bytes | IntegrityError]:
        """Open many envelopes; each result is the plaintext or the error for it.

        One forged envelope never fails its neighbours.
        """
        ...


class _CryptographySuite:
    """Shared body of the suites that wrap an OpenSSL AEAD from ``cryptography``."""

    name = ""
    suite_id = 0
    key_size = 32
    nonce_size = 12
    tag_size = 16
    max_messages = 2**32

    def _cipher(self, key: bytes) -> AESGCM | ChaCha20Poly1305:
        raise ConfigError(f"suite {self.name!r} has no cipher")

    def _check_key(self, key: bytes) -> None:
        if len(key) != self.key_size:
            raise IntegrityError(f"{self.name}: key must be {self.key_size} bytes")

    def seal(self, key: bytes, nonce: bytes, associated_data: bytes, plaintext: bytes) -> bytes:
        self._check_key(key)
        return self._cipher(key).encrypt(nonce, plaintext, associated_data)

    def open(self, key: bytes, nonce: bytes, associated_data: bytes, ciphertext: bytes) -> bytes:
        self._check_key(key)
        if len(nonce) != self.nonce_size or len(ciphertext) < self.tag_size:
            raise IntegrityError(f"{self.name}: bad nonce or truncated ciphertext")
        try:
            return self._cipher(key).decrypt(nonce, ciphertext, associated_data)
        except InvalidTag:
            raise IntegrityError(f"{self.name}: tag mismatch") from None

    def open_batch(self, requests: Sequence[OpenRequest]) -> list[bytes | IntegrityError]:
        # OpenSSL is fastest one message at a time; cache the cipher object
        # per key because a batch usually holds many messages per device.
        out: list[bytes | IntegrityError] = []
        ciphers: dict[bytes, AESGCM | ChaCha20Poly1305] = {}
        for r in requests:
            try:
                if len(r.key) != self.key_size or len(r.nonce) != self.nonce_size:
                    raise IntegrityError(f"{self.name}: bad key or nonce length")
                c = ciphers.get(r.key)
                if c is None:
                    c = ciphers[r.key] = self._cipher(r.key)
                out.append(c.decrypt(r.nonce, r.ciphertext, r.associated_data))
            except InvalidTag:
                out.append(IntegrityError(f"{self.name}: tag mismatch"))
            except IntegrityError as exc:
                out.append(exc)
            except ValueError as exc:
                out.append(IntegrityError(f"{self.name}: {exc}"))
        return out


class ChaCha20Poly1305Suite(_CryptographySuite):
    """ChaCha20-Poly1305 (RFC 8439) from OpenSSL: fast in software everywhere."""

    name = "chacha20-poly1305"
    suite_id = 1
    key_size = 32
    # 96-bit nonces from a counter never repeat; 2^32 messages keeps the
    # per-key data volume far inside RFC 8439's safety margin.
    max_messages = 2**32

    def _cipher(self, key: bytes) -> ChaCha20Poly1305:
        return ChaCha20Poly1305(key)


class AesGcmSuite(_CryptographySuite):
    """AES-GCM from OpenSSL, for devices with AES hardware."""

    suite_id = 2
    # NIST SP 800-38D: with deterministic (counter) nonces the limit is the
    # nonce space; 2^32 keeps the tag forgery bound negligible.
    max_messages = 2**32

    def __init__(self, key_size: int) -> None:
        if key_size not in (16, 32):
            raise ConfigError("AES-GCM key size must be 16 or 32 bytes")
        self.key_size = key_size
        self.name = f"aes-{key_size * 8}-gcm"
        self.suite_id = 2 if key_size == 16 else 3

    def _cipher(self, key: bytes) -> AESGCM:
        return AESGCM(key)


_REGISTRY: dict[str, AeadSuite] = {}
_BY_ID: dict[int, AeadSuite] = {}


def register_suite(suite: AeadSuite) -> None:
    """Add a suite to the registry (name and id must be unique)."""
    if suite.name in _REGISTRY or suite.suite_id in _BY_ID:
        existing = _REGISTRY.get(suite.name) or _BY_ID.get(suite.suite_id)
        if existing is suite:
            return
        raise ConfigError(f"suite {suite.name!r} (id {suite.suite_id}) already registered")
    _REGISTRY[suite.name] = suite
    _BY_ID[suite.suite_id] = suite


def get_suite(name_or_id: str | int) -> AeadSuite:
    """Look a suite up by wire name or numeric id.

    Raises:
        ConfigError: no such suite.
    """
    suite = _BY_ID.get(name_or_id) if isinstance(name_or_id, int) else _REGISTRY.get(name_or_id)
    if suite is None:
        raise ConfigError(f"unknown cipher suite {name_or_id!r}; known: {', '.join(suite_names())}")
    return suite


def suite_names() -> list[str]:
    """Names of all registered suites."""
    return sorted(_REGISTRY)


register_suite(ChaCha20Poly1305Suite())
register_suite(AesGcmSuite(16))
register_suite(AesGcmSuite(32))
