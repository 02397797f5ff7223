"""Ascon-AEAD128 as an :class:`~iotguard.crypto.aead.AeadSuite`."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from iotguard.crypto.aead import OpenRequest, register_suite
from iotguard.crypto.ascon._parameters import KEY_SIZE, MAX_MESSAGES_PER_KEY, NONCE_SIZE, TAG_SIZE
from iotguard.crypto.ascon.aead import aead_decrypt, aead_encrypt
from iotguard.crypto.ascon.batch import aead_decrypt_batch
from iotguard.errors import IntegrityError

__all__ = ["AsconAead128Suite"]

_KEY = attrgetter("key")
_NONCE = attrgetter("nonce")
_ASSOCIATED_DATA = attrgetter("associated_data")
_CIPHERTEXT = attrgetter("ciphertext")


class AsconAead128Suite:
    """Ascon-AEAD128 (NIST SP 800-232): the suite for constrained devices.

    Sealing uses the scalar implementation; :meth:`open_batch` opens a whole
    batch with the bitsliced NumPy implementation, each envelope under its
    own key.
    """

    name = "ascon-aead128"
    suite_id = 4
    key_size = KEY_SIZE
    nonce_size = NONCE_SIZE
    tag_size = TAG_SIZE
    max_messages = MAX_MESSAGES_PER_KEY

    def seal(self, key: bytes, nonce: bytes, associated_data: bytes, plaintext: bytes) -> bytes:
        """Encrypt and authenticate; returns ciphertext with the tag appended.

        Raises:
            IntegrityError: the key or nonce has the wrong length.
        """
        return aead_encrypt(key, nonce, associated_data, plaintext)

    def open(self, key: bytes, nonce: bytes, associated_data: bytes, ciphertext: bytes) -> bytes:
        """Verify and decrypt.

        Raises:
            IntegrityError: the tag does not verify or a length is wrong; no
                plaintext is released.
        """
        return aead_decrypt(key, nonce, associated_data, ciphertext)

    def open_batch(self, requests: Sequence[OpenRequest]) -> list[bytes | IntegrityError]:
        """Open many envelopes; each result is the plaintext or the error for it.

        One forged envelope never fails its neighbours.
        """
        return aead_decrypt_batch(
            list(map(_KEY, requests)),
            list(map(_NONCE, requests)),
            list(map(_ASSOCIATED_DATA, requests)),
            list(map(_CIPHERTEXT, requests)),
        )


register_suite(AsconAead128Suite())
