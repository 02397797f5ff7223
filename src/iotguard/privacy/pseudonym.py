"""Keyed pseudonymisation with per-purpose keys that rotate on a schedule.

A pseudonym is ``HMAC-SHA256(K[purpose, period], value)``, truncated and
base32-encoded. ``K[purpose, period] = HKDF-SHA256(root, salt="iotguard
pseudonym v1", info=purpose || period)``, so:

- the same value gets the same pseudonym within one purpose and period
  (analyses can count distinct things and join records inside a purpose);
- pseudonyms of different purposes, or of different periods, are outputs of
  independent pseudo-random functions and cannot be linked without the
  root secret;
- the root never leaves the device. :func:`keyring_from_keystore` derives it
  from a key held in the device's key store without exporting that key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotguard.errors import ConfigError
from iotguard.keys.keystore import KeyKind, KeyStore

__all__ = ["PSEUDONYM_ROOT_LABEL", "PseudonymKeyring", "keyring_from_keystore", "period_number"]

#: Key-store label of the Ed25519 key the pseudonym root is derived from.
PSEUDONYM_ROOT_LABEL = "privacy-pseudonym-root"
_SALT = b"iotguard pseudonym v1"
_ROOT_MESSAGE = b"iotguard pseudonym root v1"


def period_number(now: datetime, period: timedelta) -> int:
    """Index of the ``period``-long window holding ``now`` (windows start at the Unix epoch).

    Raises:
        ConfigError: ``now`` is naive or ``period`` is not positive.
    """
    if now.tzinfo is None:
        raise ConfigError("time must be timezone-aware UTC")
    seconds = int(period.total_seconds())
    if seconds <= 0:
        raise ConfigError("period must be positive")
    return int(now.timestamp()) // seconds


class PseudonymKeyring:
    """Per-purpose, per-period pseudonymisation keys derived from one root secret.

    Args:
        root: At least 32 bytes of secret key material.
        rotation: How long one pseudonym key lives.

    Raises:
        ConfigError: the root is too short or the rotation is not positive.
    """

    def __init__(self, root: bytes, rotation: timedelta) -> None:
        if len(root) < 32:
            raise ConfigError("pseudonym root must be at least 32 bytes")
        if rotation.total_seconds() <= 0:
            raise ConfigError("pseudonym rotation must be positive")
        self._root = bytes(root)
        self.rotation = rotation
        self._cache: dict[tuple[str, int], bytes] = {}

    def __repr__(self) -> str:
        return f"PseudonymKeyring(rotation={self.rotation})"

    def key(self, purpose: str, period: int) -> bytes:
        """The 32-byte pseudonym key of ``purpose`` in ``period``."""
        k = self._cache.get((purpose, period))
        if k is None:
            info = b"purpose=" + purpose.encode() + b";period=" + str(period).encode()
            k = HKDF(hashes.SHA256(), 32, salt=_SALT, info=info).derive(self._root)
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[(purpose, period)] = k
        return k

    def pseudonym(self, value: str, purpose: str, now: datetime, *, length: int = 16) -> str:
        """Pseudonym of ``value`` for ``purpose`` in the period holding ``now``."""
        period = period_number(now, self.rotation)
        mac = hmac.new(self.key(purpose, period), value.encode(), hashlib.sha256).digest()
        return base64.b32encode(mac).decode().rstrip("=").lower()[:length]


def keyring_from_keystore(
    keystore: KeyStore, rotation: timedelta, *, label: str = PSEUDONYM_ROOT_LABEL
) -> PseudonymKeyring:
    """Build a keyring whose root is bound to a key that never leaves ``keystore``.

    The root is ``SHA-256`` of an Ed25519 signature, by the key ``label``
    (created on first use), over a fixed message. Ed25519 signing is
    deterministic (RFC 8032), so the root is stable across restarts; it is
    unpredictable to anyone without the key, since predicting it would mean
    forging a signature.

    Raises:
        KeyStoreError: the key store cannot create or use the key.
    """
    if not keystore.has_key(label):
        keystore.generate(label, KeyKind.ED25519)
    signature = keystore.sign(label, _ROOT_MESSAGE)
    return PseudonymKeyring(hashlib.sha256(b"iotguard pseudonym root|" + signature).digest(), rotation)
