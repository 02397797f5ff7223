"""The software key store's in-memory key entries (split from :mod:`iotguard.keys.software`)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from iotguard.keys.keystore import KeyKind

__all__: list[str] = []


@dataclass(slots=True)
class _Entry:
    """One loaded key. ``repr`` never shows the key object."""

    kind: KeyKind
    key: Ed25519PrivateKey | X25519PrivateKey | AESGCM
    public: bytes
    aes_secret: bytes = b""

    def __repr__(self) -> str:
        return f"_Entry({self.kind.value})"

    def secret_bytes(self) -> bytes:
        if isinstance(self.key, Ed25519PrivateKey | X25519PrivateKey):
            return self.key.private_bytes_raw()
        return self.aes_secret


def _new_secret(kind: KeyKind) -> bytes:
    if kind is KeyKind.ED25519:
        return Ed25519PrivateKey.generate().private_bytes_raw()
    if kind is KeyKind.X25519:
        return X25519PrivateKey.generate().private_bytes_raw()
    return secrets.token_bytes(32)


def _load_entry(kind: KeyKind, secret: bytes) -> _Entry:
    if kind is KeyKind.ED25519:
        ed = Ed25519PrivateKey.from_private_bytes(secret)
        return _Entry(kind, ed, ed.public_key().public_bytes_raw())
    if kind is KeyKind.X25519:
        x = X25519PrivateKey.from_private_bytes(secret)
        return _Entry(kind, x, x.public_key().public_bytes_raw())
    return _Entry(kind, AESGCM(secret), b"", secret)
