"""``PufKeyStore``: a ``KeyStore`` whose keys are re-derived from the PUF on every use.

Nothing secret is stored. At creation the store enrolls the PUF once
(majority of several power-up reads) through the fuzzy extractor and keeps
only the public helper data. A *root key* is reconstructed from a fresh
noisy read whenever it is needed, and each labelled key is
``HKDF(root, salt=nonce, info=kind || label)`` with a random per-key nonce, so
deleting a key (forgetting its nonce) destroys it and a new key under the
same label is unrelated. The store file (``puf-store.cbor``: helper data,
key kinds, nonces, public keys, counters) is public but authenticated with an
HMAC under a key derived from the root, so it cannot be altered — and a copy
of it is useless on another device, whose PUF reconstructs a different root.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

import cbor2
import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotguard.errors import IntegrityError, KeyStoreError, MalformedError
from iotguard.fileio import atomic_write
from iotguard.keys.keystore import KeyKind
from iotguard.keys.puf.enrollment import PufEnrollmentAssessment, PufEnrollmentLimits, checked_enrollment_reference
from iotguard.keys.puf.fuzzy import FuzzyExtractor, HelperData

__all__ = ["PufKeyStore", "PufSource", "majority_reference"]

_FILE = "puf-store.cbor"
_CONTEXT = b"iotguard puf keystore root"
#: Largest store file read (bytes).
MAX_STORE_BYTES = 4 * 1024 * 1024


class PufSource(Protocol):
    """A PUF that answers noisy power-up reads (e.g. :class:`~iotguard.keys.puf.sram.SramPuf`)."""

    def read(self) -> npt.NDArray[np.uint8]:
        """One noisy response (0/1 values)."""
        ...


@dataclass(slots=True)
class _Entry:
    kind: KeyKind
    nonce: bytes
    public: bytes


def majority_reference(puf: PufSource, reads: int) -> npt.NDArray[np.uint8]:
    """Enrollment reference: the per-bit majority of ``reads`` (odd) power-up reads."""
    if reads < 1 or reads % 2 == 0:
        raise ValueError("enrollment needs an odd number of reads")
    total = np.sum([puf.read() for _ in range(reads)], axis=0)
    reference: npt.NDArray[np.uint8] = (total > reads // 2).astype(np.uint8)
    return reference


class PufKeyStore:
    """Key custody rooted in a PUF through a fuzzy extractor.

    Args:
        puf: The device's PUF.
        directory: Where the (public, authenticated) store file lives.
        extractor: Fuzzy extractor (defaults meet 1e-6 at 15 % bit errors).
        enrollment_reads: Power-up reads majority-voted at enrollment.
        max_attempts: Fresh reads tried before a reconstruction is declared
            failed (each attempt fails with probability < 1e-6).
        limits: What the PUF must show at enrollment (bias, independence,
            noise); see :mod:`iotguard.keys.puf.enrollment`.

    Raises:
        PufQualityError: at enrollment, the PUF is biased enough that the
            helper data would expose the key, correlated, or too noisy.
        KeyStoreError: the store file does not authenticate with this PUF
            (altered, or copied from another device) or the key cannot be
            reconstructed.
    """

    def __init__(
        self,
        puf: PufSource,
        directory: str | os.PathLike[str],
        *,
        extractor: FuzzyExtractor | None = None,
        enrollment_reads: int = 9,
        max_attempts: int = 3,
        limits: PufEnrollmentLimits | None = None,
    ) -> None:
        self._puf = puf
        self._fe = extractor or FuzzyExtractor()
        self._attempts = max(1, max_attempts)
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._keys: dict[str, _Entry] = {}
        self._counters: dict[str, int] = {}
        #: Measurements of this store's enrollment (``None`` when it was opened, not enrolled).
        self.enrollment: PufEnrollmentAssessment | None = None
        path = self._dir / _FILE
        if path.exists():
            self._helper = self._load(path)
        else:
            if enrollment_reads < 1 or enrollment_reads % 2 == 0:
                raise ValueError("enrollment needs an odd number of reads")
            reads = np.stack([puf.read() for _ in range(enrollment_reads)])
            reference, self.enrollment = checked_enrollment_reference(reads, self._fe.params, limits)
            _, self._helper = self._fe.generate(reference, context=_CONTEXT)
            self._save()

    def __repr__(self) -> str:
        return f"PufKeyStore({str(self._dir)!r}, keys={sorted(self._keys)})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a key store cannot be pickled or copied")

    @property
    def helper_data(self) -> bytes:
        """The public helper data of this device's enrollment."""
        return self._helper.to_bytes()

    # -- reconstruction ------------------------------------------------------

    def _root(self) -> bytes:
        for _ in range(self._attempts):
            try:
                return self._fe.reproduce(self._puf.read(), self._helper, context=_CONTEXT)
            except KeyStoreError:
                continue
        raise KeyStoreError("PUF key reconstruction failed (wrong device or PUF out of specification)")

    @staticmethod
    def _mac(root: bytes, body: bytes) -> bytes:
        mac_key = HKDF(hashes.SHA256(), 32, salt=None, info=b"iotguard puf store mac").derive(root)
        return hmac.new(mac_key, body, hashlib.sha256).digest()

    def _derive(self, label: str, entry: _Entry) -> bytes:
        info = b"iotguard puf key\0" + entry.kind.value.encode() + b"\0" + label.encode()
        return HKDF(hashes.SHA256(), 32, salt=entry.nonce, info=info).derive(self._root())

    # -- persistence ---------------------------------------------------------

    def _body(self) -> bytes:
        return cbor2.dumps(
            {
                "v": 1,
                "helper": self._helper.to_bytes(),
                "keys": {k: [e.kind.value, e.nonce, e.public] for k, e in self._keys.items()},
                "counters": self._counters,
            },
            canonical=True,
        )

    def _save(self) -> None:
        body = self._body()
        tag = self._mac(self._root(), body)
        atomic_write(self._dir / _FILE, cbor2.dumps({"body": body, "tag": tag}, canonical=True))

    def _load(self, path: Path) -> HelperData:
        # The MAC key comes from the root, and the root needs the helper offset,
        # so exactly one thing is read before the MAC is checked: the helper
        # data's fixed-length offset and check value, under this store's own
        # code parameters (helper data stating others is refused before any of
        # its numbers reach the BCH library). Everything else in the file is
        # parsed only after the MAC over the whole body has verified.
        raw = path.read_bytes()
        if len(raw) > MAX_STORE_BYTES:
            raise KeyStoreError("PUF store file too large")
        try:
            outer = cbor2.loads(raw)
            if not isinstance(outer, dict) or set(outer) != {"body", "tag"}:
                raise ValueError("not a PUF store file")
            body, tag = outer["body"], outer["tag"]
            if not isinstance(body, bytes) or not isinstance(tag, bytes) or len(tag) != 32:
                raise ValueError("PUF store body and tag must be bytes")
            state = cbor2.loads(body)
            if not isinstance(state, dict) or state.get("v") != 1 or not isinstance(state.get("helper"), bytes):
                raise ValueError("unsupported PUF store format")
            self._helper = HelperData.from_bytes(state["helper"], expected=self._fe.params)
        except (ValueError, KeyError, TypeError, RecursionError, MalformedError, cbor2.CBORDecodeError) as exc:
            raise KeyStoreError(f"PUF store file is malformed: {exc}") from None
        if not hmac.compare_digest(self._mac(self._root(), body), tag):
            raise KeyStoreError("PUF store file failed its integrity check")
        try:
            self._keys = {
                str(k): _Entry(KeyKind(v[0]), bytes(v[1]), bytes(v[2])) for k, v in state["keys"].items()
            }
            self._counters = {str(k): int(v) for k, v in state["counters"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise KeyStoreError(f"PUF store file is malformed: {exc}") from None
        return self._helper

    def _entry(self, label: str, kind: KeyKind) -> _Entry:
        with self._lock:
            entry = self._keys.get(label)
        if entry is None:
            raise KeyStoreError(f"no key {label!r}")
        if entry.kind is not kind:
            raise KeyStoreError(f"key {label!r} is {entry.kind.value}, not {kind.value}")
        return entry

    # -- KeyStore ------------------------------------------------------------

    def generate(self, label: str, kind: KeyKind) -> bytes:
        """Create a key under ``label`` (a fresh nonce); returns its public key (b"" for AES).

        Raises:
            KeyStoreError: ``label`` exists, or the PUF key cannot be reconstructed.
        """
        kind = KeyKind(kind)
        with self._lock:
            if label in self._keys:
                raise KeyStoreError(f"key {label!r} exists")
            entry = _Entry(kind, secrets.token_bytes(16), b"")
            secret = self._derive(label, entry)
            if kind is KeyKind.ED25519:
                entry.public = Ed25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
            elif kind is KeyKind.X25519:
                entry.public = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
            self._keys[label] = entry
            try:
                self._save()
            except BaseException:
                del self._keys[label]
                raise
            return entry.public

    def has_key(self, label: str) -> bool:
        """Whether a key named ``label`` exists."""
        with self._lock:
            return label in self._keys

    def public_key(self, label: str) -> bytes:
        """Raw public key bytes of an asymmetric key.

        Raises:
            KeyStoreError: no such key, or it is symmetric.
        """
        with self._lock:
            entry = self._keys.get(label)
        if entry is None:
            raise KeyStoreError(f"no key {label!r}")
        if entry.kind is KeyKind.AES256:
            raise KeyStoreError(f"key {label!r} is symmetric and has no public key")
        return entry.public

    def sign(self, label: str, message: bytes) -> bytes:
        """Reconstruct the Ed25519 key from the PUF and sign ``message``.

        Raises:
            KeyStoreError: no such Ed25519 key, or reconstruction failed.
        """
        entry = self._entry(label, KeyKind.ED25519)
        return Ed25519PrivateKey.from_private_bytes(self._derive(label, entry)).sign(message)

    def derive(self, label: str, peer_public_key: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
        """X25519 agreement with a PUF-derived key, then HKDF-SHA256.

        Raises:
            KeyStoreError: no such X25519 key, bad peer key, or reconstruction failed.
        """
        entry = self._entry(label, KeyKind.X25519)
        try:
            peer = X25519PublicKey.from_public_bytes(peer_public_key)
            shared = X25519PrivateKey.from_private_bytes(self._derive(label, entry)).exchange(peer)
        except ValueError as exc:
            raise KeyStoreError(f"key agreement failed: {exc}") from None
        return HKDF(hashes.SHA256(), length, salt=salt, info=info).derive(shared)

    def seal(self, label: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """AES-256-GCM under a PUF-derived key; returns nonce || ciphertext || tag.

        Raises:
            KeyStoreError: no such AES key, or reconstruction failed.
        """
        entry = self._entry(label, KeyKind.AES256)
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self._derive(label, entry)).encrypt(nonce, plaintext, associated_data)

    def unseal(self, label: str, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Reverse :meth:`seal`.

        Raises:
            IntegrityError: the blob or associated data was altered.
            KeyStoreError: no such AES key, or reconstruction failed.
        """
        entry = self._entry(label, KeyKind.AES256)
        if len(sealed) < 28:
            raise IntegrityError("sealed blob is truncated")
        try:
            return AESGCM(self._derive(label, entry)).decrypt(sealed[:12], sealed[12:], associated_data)
        except InvalidTag:
            raise IntegrityError("sealed blob failed authentication") from None

    def counter(self, name: str) -> int:
        """Current value of a persistent monotonic counter (0 if never used)."""
        with self._lock:
            return self._counters.get(name, 0)

    def advance_counter(self, name: str, to_at_least: int) -> int:
        """Raise counter ``name`` to at least ``to_at_least``, durably; returns the new value.

        Raises:
            KeyStoreError: the PUF key (which authenticates the store file) cannot be reconstructed.
        """
        with self._lock:
            current = self._counters.get(name, 0)
            if to_at_least <= current:
                return current
            self._counters[name] = int(to_at_least)
            try:
                self._save()
            except BaseException:
                self._counters[name] = current
                raise
            return int(to_at_least)

    def delete(self, label: str) -> None:
        """Destroy one key by forgetting its nonce.

        Raises:
            KeyStoreError: the PUF key cannot be reconstructed.
        """
        with self._lock:
            if self._keys.pop(label, None) is not None:
                self._save()

    def zeroize(self) -> None:
        """Destroy every key (forget all nonces); counters survive.

        Raises:
            KeyStoreError: the PUF key cannot be reconstructed.
        """
        with self._lock:
            self._keys.clear()
            self._save()
