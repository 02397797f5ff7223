"""The ``KeyStore`` protocol: key custody where private keys never leave.

A key store generates keys inside itself and offers only operations on
them: sign, derive (X25519 agreement + HKDF), seal/unseal (symmetric
wrapping), and persistent monotonic counters. No method returns private key
bytes. Backends (software secure element, PKCS#11 HSM, PUF-derived) all
pass ``tests/keys/test_keystore_contract.py``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

__all__ = ["KeyKind", "KeyStore"]


class KeyKind(StrEnum):
    """Kinds of key a store can hold."""

    ED25519 = "ed25519"  # signing (device identity, checkpoints, CA)
    X25519 = "x25519"  # key agreement (session keys)
    AES256 = "aes256"  # sealing / wrapping


@runtime_checkable
class KeyStore(Protocol):
    """Key custody. Private and secret keys never leave the store."""

    def generate(self, label: str, kind: KeyKind) -> bytes:
        """Create a key under ``label`` and return its public key (b"" for AES).

        Raises:
            KeyStoreError: ``label`` exists already.
        """
        ...

    def has_key(self, label: str) -> bool:
        """Whether a key named ``label`` exists."""
        ...

    def public_key(self, label: str) -> bytes:
        """Raw public key bytes of an asymmetric key.

        Raises:
            KeyStoreError: no such key, or it is symmetric.
        """
        ...

    def sign(self, label: str, message: bytes) -> bytes:
        """Sign ``message`` with an Ed25519 key; returns the 64-byte signature."""
        ...

    def derive(self, label: str, peer_public_key: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
        """X25519 agreement with ``peer_public_key`` then HKDF-SHA256.

        Returns the derived key material (a session key), never the private key.
        """
        ...

    def seal(self, label: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt ``plaintext`` under the AES key ``label`` (nonce || ct || tag)."""
        ...

    def unseal(self, label: str, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Reverse :meth:`seal`.

        Raises:
            IntegrityError: the blob or associated data was altered.
        """
        ...

    def counter(self, name: str) -> int:
        """Current value of a persistent monotonic counter (0 if never used)."""
        ...

    def advance_counter(self, name: str, to_at_least: int) -> int:
        """Raise counter ``name`` to at least ``to_at_least``, durably; returns the new value.

        A counter never goes down: a lower target leaves it unchanged.
        """
        ...

    def delete(self, label: str) -> None:
        """Destroy one key (crypto-erase)."""
        ...

    def zeroize(self) -> None:
        """Destroy every key in the store (tamper response, decommissioning)."""
        ...
