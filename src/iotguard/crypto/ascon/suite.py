"""Ascon-AEAD128 as an :class:`~iotguard.crypto.aead.AeadSuite`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter

from iotguard.crypto.aead import OpenRequest, register_suite
from iotguard.crypto.ascon._parameters import KEY_SIZE, MAX_MESSAGES_PER_KEY, NONCE_SIZE, TAG_SIZE
from iotguard.crypto.ascon.aead import aead_decrypt, aead_encrypt
from iotguard.crypto.ascon.batch import aead_decrypt_batch
from iotguard.errors import ConfigError, IntegrityError

__all__ = ["AsconAead128Suite"]

_KEY = attrgetter("key")
_NONCE = attrgetter("nonce")
_ASSOCIATED_DATA = attrgetter("associated_data")
_CIPHERTEXT = attrgetter("ciphertext")


class AsconAead128Suite:
    """Ascon-AEAD128 (NIST SP 800-232): the suite for constrained devices.

    Sealing uses the scalar implementation; :meth:`open_batch` opens a whole
    batch with the bitsliced NumPy implementation, each envelope under its
    own key, or with the Numba-compiled one (:mod:`.compiled`) when
    ``compiled`` is true.

    Args:
        compiled: Open batches with the compiled accelerator. It is compiled
            here, once per process (a few seconds), not on the first batch.

    Raises:
        ConfigError: ``compiled`` is asked for and Numba is not installed
            (``pip install iotguard[accel]``).
    """

    name = "ascon-aead128"
    suite_id = 4
    key_size = KEY_SIZE
    nonce_size = NONCE_SIZE
    tag_size = TAG_SIZE
    max_messages = MAX_MESSAGES_PER_KEY

    def __init__(self, *, compiled: bool = False) -> None:
        self._open_batch: Callable[
            [Sequence[bytes], Sequence[bytes], Sequence[bytes], Sequence[bytes]], list[bytes | IntegrityError]
        ] = aead_decrypt_batch
        self.compiled = compiled
        if compiled:
            try:
                from iotguard.crypto.ascon import compiled as accelerator
            except ImportError as exc:
                raise ConfigError("the compiled Ascon accelerator needs numba (pip install iotguard[accel])") from exc
            accelerator.aead_decrypt_batch([bytes(KEY_SIZE)], [bytes(NONCE_SIZE)], [b""], [bytes(TAG_SIZE)])
            self._open_batch = accelerator.aead_decrypt_batch

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
        return self._open_batch(
            list(map(_KEY, requests)),
            list(map(_NONCE, requests)),
            list(map(_ASSOCIATED_DATA, requests)),
            list(map(_CIPHERTEXT, requests)),
        )


register_suite(AsconAead128Suite())
