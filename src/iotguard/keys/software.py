"""Software secure element: a ``KeyStore`` in one sealed file.

The store keeps its keys and counters in a CBOR map that is sealed at rest
with AES-256-GCM under a key-encryption key (KEK). The KEK comes from a
32-byte root secret that plays the role of a fused device secret: it is
created with the store, kept in its own file (mode 0600) and is never
written anywhere else. Every change is written atomically (temporary file,
fsync, rename), so a crash leaves either the old or the new state, and
counters never go backwards.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotguard.errors import IntegrityError, KeyStoreError
from iotguard.keys.keystore import KeyKind

__all__ = ["SoftwareKeyStore"]

_FORMAT = 1
_STORE_FILE = "keystore.sealed"
_ROOT_FILE = "root.secret"
_AD = b"iotguard-software-keystore-v1"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class SoftwareKeyStore:
    """A software secure element backed by a directory.

    Args:
        directory: Where the sealed store and its root secret live. Created
            (mode 0700) if missing.

    Raises:
        KeyStoreError: the sealed store exists but cannot be opened (wrong
            root secret, corrupted or tampered file).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        root_path = self._dir / _ROOT_FILE
        if not root_path.exists():
            _atomic_write(root_path, secrets.token_bytes(32))
        root = root_path.read_bytes()
        if len(root) != 32:
            raise KeyStoreError("root secret has the wrong length")
        self._kek = HKDF(hashes.SHA256(), 32, salt=None, info=b"iotguard keystore kek").derive(root)
        self._keys: dict[str, tuple[str, bytes]] = {}
        self._counters: dict[str, int] = {}
        self._load()

    def __repr__(self) -> str:
        return f"SoftwareKeyStore({str(self._dir)!r}, keys={sorted(self._keys)})"

    # -- persistence -------------------------------------------------------

    def _load(self) -> None:
        path = self._dir / _STORE_FILE
        if not path.exists():
            return
        blob = path.read_bytes()
        if len(blob) < 12 + 16:
            raise KeyStoreError("sealed key store is truncated")
        try:
            raw = AESGCM(self._kek).decrypt(blob[:12], blob[12:], _AD)
        except InvalidTag:
            raise KeyStoreError("sealed key store failed its integrity check") from None
        state: dict[str, Any] = cbor2.loads(raw)
        if state.get("v") != _FORMAT:
            raise KeyStoreError("unsupported key store format")
        self._keys = {k: (str(v[0]), bytes(v[1])) for k, v in state["keys"].items()}
        self._counters = {k: int(v) for k, v in state["counters"].items()}

    def _save(self) -> None:
        state = {
            "v": _FORMAT,
            "keys": {k: [kind, secret] for k, (kind, secret) in self._keys.items()},
            "counters": self._counters,
        }
        nonce = secrets.token_bytes(12)
        sealed = nonce + AESGCM(self._kek).encrypt(nonce, cbor2.dumps(state, canonical=True), _AD)
        _atomic_write(self._dir / _STORE_FILE, sealed)

    def _get(self, label: str, kind: KeyKind) -> bytes:
        entry = self._keys.get(label)
        if entry is None:
            raise KeyStoreError(f"no key {label!r}")
        if entry[0] != kind:
            raise KeyStoreError(f"key {label!r} is {entry[0]}, not {kind}")
        return entry[1]

    # -- KeyStore ----------------------------------------------------------

    def generate(self, label: str, kind: KeyKind) -> bytes:
        kind = KeyKind(kind)
        with self._lock:
            if label in self._keys:
                raise KeyStoreError(f"key {label!r} exists")
            if kind is KeyKind.ED25519:
                secret = Ed25519PrivateKey.generate().private_bytes_raw()
            elif kind is KeyKind.X25519:
                secret = X25519PrivateKey.generate().private_bytes_raw()
            else:
                secret = secrets.token_bytes(32)
            self._keys[label] = (kind.value, secret)
            self._save()
            return b"" if kind is KeyKind.AES256 else self.public_key(label)

    def has_key(self, label: str) -> bool:
        with self._lock:
            return label in self._keys

    def public_key(self, label: str) -> bytes:
        with self._lock:
            entry = self._keys.get(label)
            if entry is None:
                raise KeyStoreError(f"no key {label!r}")
            kind, secret = entry
        if kind == KeyKind.ED25519:
            return Ed25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
        if kind == KeyKind.X25519:
            return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
        raise KeyStoreError(f"key {label!r} is symmetric and has no public key")

    def sign(self, label: str, message: bytes) -> bytes:
        with self._lock:
            secret = self._get(label, KeyKind.ED25519)
        return Ed25519PrivateKey.from_private_bytes(secret).sign(message)

    def derive(self, label: str, peer_public_key: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
        with self._lock:
            secret = self._get(label, KeyKind.X25519)
        try:
            peer = X25519PublicKey.from_public_bytes(peer_public_key)
            shared = X25519PrivateKey.from_private_bytes(secret).exchange(peer)
        except ValueError as exc:
            raise KeyStoreError(f"key agreement failed: {exc}") from None
        return HKDF(hashes.SHA256(), length, salt=salt, info=info).derive(shared)

    def seal(self, label: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        with self._lock:
            secret = self._get(label, KeyKind.AES256)
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(secret).encrypt(nonce, plaintext, associated_data)

    def unseal(self, label: str, sealed: bytes, associated_data: bytes = b"") -> bytes:
        with self._lock:
            secret = self._get(label, KeyKind.AES256)
        if len(sealed) < 28:
            raise IntegrityError("sealed blob is truncated")
        try:
            return AESGCM(secret).decrypt(sealed[:12], sealed[12:], associated_data)
        except InvalidTag:
            raise IntegrityError("sealed blob failed authentication") from None

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters.get(name, 0)

    def advance_counter(self, name: str, to_at_least: int) -> int:
        with self._lock:
            current = self._counters.get(name, 0)
            if to_at_least > current:
                self._counters[name] = to_at_least
                self._save()
                return to_at_least
            return current

    def delete(self, label: str) -> None:
        with self._lock:
            if self._keys.pop(label, None) is not None:
                self._save()

    def zeroize(self) -> None:
        with self._lock:
            self._keys.clear()
            self._save()
