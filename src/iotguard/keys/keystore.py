"""The ``KeyStore`` protocol: key custody where private keys never leave.

A key store generates keys inside itself and offers only operations on
them: sign, derive (X25519 agreement + HKDF), seal/unseal (symmetric
wrapping), and persistent monotonic counters. No method returns private key
bytes. Backends (software secure element, PKCS#11 HSM, PUF-derived) all
pass ``tests/keys/test_keys_contract.py``.

Stores that have a tamper sensor also implement :class:`TamperResponsive`:
after a tamper event their keys are destroyed, every key operation raises
:class:`~iotguard.errors.TamperError`, and :attr:`TamperResponsive.tamper_record`
tells the agent what happened so it can report it (the hub then marks the
device untrusted). :func:`tamper_record_of` reads that state from any store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

__all__ = ["BatchKeyGeneration", "KeyKind", "KeyStore", "TamperRecord", "TamperResponsive", "tamper_record_of"]


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


@runtime_checkable
class BatchKeyGeneration(Protocol):
    """A store that creates many keys in one durable write (the software store, whose one sealed file
    holds every key: a write per key costs O(keys), so O(keys^2) for a fleet's first readings)."""

    def generate_many(self, labels: Sequence[str], kind: KeyKind) -> list[bytes]:
        """Create a key under each label, all or none; their public keys (b"" for AES)."""
        ...


@dataclass(frozen=True)
class TamperRecord:
    """What a key store recorded when it detected tampering.

    Attributes:
        reason: Stable reason code, e.g. ``"enclosure_open"``,
            ``"integrity_check_failed"`` (sealed store unreadable: corrupted,
            altered, or copied from another device), ``"root_secret_missing"``.
        detected_at: When the store detected it (aware UTC).
        detail: Short operator-facing detail; never contains secrets.
    """

    reason: str
    detected_at: datetime
    detail: str = ""


@runtime_checkable
class TamperResponsive(Protocol):
    """A key store with a tamper response (optional, beside :class:`KeyStore`).

    After :meth:`tamper_event` (or an integrity failure the store detects by
    itself) the keys are zeroized, a :class:`TamperRecord` is persisted, and
    every key operation of the store raises :class:`~iotguard.errors.TamperError`
    until the device is re-provisioned.
    """

    @property
    def tamper_record(self) -> TamperRecord | None:
        """The persisted tamper record, or ``None`` if the store was never tampered with."""
        ...

    def tamper_event(self, reason: str, *, now: datetime | None = None) -> TamperRecord:
        """Respond to tampering: zeroize, persist a record, refuse all further use.

        Called by the enclosure-open signal handler (or any platform tamper
        sensor). Idempotent: a second event keeps the first record.
        """
        ...

    def require_untampered(self) -> None:
        """Raise :class:`~iotguard.errors.TamperError` if the store was tampered with."""
        ...


def tamper_record_of(store: object) -> TamperRecord | None:
    """Tamper record of any key store (``None`` for stores without a tamper sensor).

    This is what the agent puts in attestation evidence as the key-store state.
    """
    if isinstance(store, TamperResponsive):
        return store.tamper_record
    return None
