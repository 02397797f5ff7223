"""Data at rest per data subject: envelope encryption, crypto-shredding, audit pseudonyms (ADR 0405).

Every data subject has one random 256-bit **data key**. The hub stores it
only wrapped (AES-256-GCM) under a **key-encryption key** of its own that
lives in the hub's key store or HSM. From the data key,
HKDF-SHA256 derives independent sub-keys:

- ``reading``: AES-256-GCM over each stored reading body; the associated
  data binds the key id, device, epoch and sequence number, so a body cannot
  be moved to another row;
- ``document``: AES-256-GCM over copies handed out (access exports, receipts);
- ``pseudonym``: HMAC-SHA256 naming the subject in the audit log.

Readings of a device that no subject owns yet are sealed under a data key
owned by the device itself; erasing the subject who owns the device later
shreds that key too.

Erasure destroys the subject's key-encryption key in the key store and
deletes its wrapped data key: a database copy taken before the erasure (a
backup, rows awaiting VACUUM) holds the data key only wrapped under a key
that no longer exists, while every other subject's data in it stays
readable. This module does no I/O; the hub's keyring
(:mod:`iotguard.hub.stores.data_keys`) stores the keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotguard.errors import IntegrityError, MalformedError

__all__ = [
    "DATA_KEY_BYTES",
    "KEY_ID_BYTES",
    "MAX_OWNER_LENGTH",
    "SubjectDataKey",
    "device_owner",
    "kek_label",
    "subject_owner",
    "wrap_associated_data",
]

#: Length of a data key and of a key id (bytes).
DATA_KEY_BYTES = 32
KEY_ID_BYTES = 16
#: Longest owner string (``subject:`` + a 128-character subject id).
MAX_OWNER_LENGTH = 160
_NONCE = 12
_TAG = 16
_SALT = b"iotguard subject data key v1"


def subject_owner(subject_id: str) -> str:
    """The key owner of a data subject."""
    return "subject:" + subject_id


def device_owner(device_id: str) -> str:
    """The key owner of readings of a device no subject owns (yet)."""
    return "device:" + device_id


def kek_label(key_id: bytes) -> str:
    """Key-store label of the key wrapping data key ``key_id`` (random: it names no one)."""
    return "privacy-subject-" + key_id.hex()


def wrap_associated_data(key_id: bytes, owner: str) -> bytes:
    """What a wrapped data key is bound to: its id and its owner."""
    return b"iotguard data key v1|" + key_id + b"|" + owner.encode()


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=_SALT, info=purpose).derive(secret)


@dataclass(frozen=True)
class SubjectDataKey:
    """One owner's data key, with the sub-keys derived from it. ``repr`` never shows key material.

    Args:
        key_id: Random, public identifier stored beside each sealed value.
        owner: :func:`subject_owner` or :func:`device_owner`.
        secret: The 32-byte data key.

    Raises:
        MalformedError: wrong key or key-id length, or an owner too long.
    """

    key_id: bytes
    owner: str
    secret: bytes = field(repr=False)
    _reading: AESGCM = field(init=False, repr=False, compare=False)
    _document: AESGCM = field(init=False, repr=False, compare=False)
    _pseudonym_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.key_id) != KEY_ID_BYTES or len(self.secret) != DATA_KEY_BYTES:
            raise MalformedError("data key or key id has the wrong length")
        if not self.owner or len(self.owner) > MAX_OWNER_LENGTH:
            raise MalformedError("data key owner is empty or too long")
        object.__setattr__(self, "_reading", AESGCM(_derive(self.secret, b"reading")))
        object.__setattr__(self, "_document", AESGCM(_derive(self.secret, b"document")))
        object.__setattr__(self, "_pseudonym_key", _derive(self.secret, b"pseudonym"))

    @classmethod
    def generate(cls, owner: str) -> SubjectDataKey:
        """A fresh random data key for ``owner``."""
        return cls(secrets.token_bytes(KEY_ID_BYTES), owner, secrets.token_bytes(DATA_KEY_BYTES))

    # -- readings --------------------------------------------------------------

    def _reading_ad(self, device_id: str, epoch: int, seq: int) -> bytes:
        return b"iotguard reading v1|" + self.key_id + struct.pack(">QQ", epoch, seq) + device_id.encode()

    def seal_reading(self, device_id: str, epoch: int, seq: int, body: bytes) -> bytes:
        """Encrypt a reading body for row (device, epoch, seq): nonce || ciphertext || tag."""
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._reading.encrypt(nonce, body, self._reading_ad(device_id, epoch, seq))

    def open_reading(self, device_id: str, epoch: int, seq: int, sealed: bytes) -> bytes:
        """Inverse of :meth:`seal_reading`.

        Raises:
            IntegrityError: truncated, altered, or moved from another row.
        """
        if len(sealed) < _NONCE + _TAG:
            raise IntegrityError("sealed reading is truncated")
        try:
            return self._reading.decrypt(sealed[:_NONCE], sealed[_NONCE:], self._reading_ad(device_id, epoch, seq))
        except InvalidTag:
            raise IntegrityError("sealed reading failed authentication") from None

    # -- documents (exports, receipts) ------------------------------------------

    def seal_document(self, kind: str, body: bytes) -> bytes:
        """Encrypt a document of ``kind`` (``"export"``, ``"receipt"``...): nonce || ciphertext || tag."""
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._document.encrypt(nonce, body, self._document_ad(kind))

    def open_document(self, kind: str, sealed: bytes) -> bytes:
        """Inverse of :meth:`seal_document`.

        Raises:
            IntegrityError: truncated, altered, or of another kind or owner.
        """
        if len(sealed) < _NONCE + _TAG:
            raise IntegrityError("sealed document is truncated")
        try:
            return self._document.decrypt(sealed[:_NONCE], sealed[_NONCE:], self._document_ad(kind))
        except InvalidTag:
            raise IntegrityError("sealed document failed authentication") from None

    def _document_ad(self, kind: str) -> bytes:
        return b"iotguard document v1|" + kind.encode() + b"|" + self.key_id + b"|" + self.owner.encode()

    # -- audit pseudonym ----------------------------------------------------------

    def pseudonym(self) -> str:
        """The name the audit log uses for this key's owner: ``subj-`` + 128 bits of HMAC-SHA256.

        Keyed by a sub-key of the data key, so once the data key is shredded
        nobody (the hub included) can tell whose pseudonym it was.
        """
        tag = hmac.new(self._pseudonym_key, b"iotguard audit pseudonym v1|" + self.owner.encode(),
                       hashlib.sha256).digest()
        return "subj-" + tag[:16].hex()
