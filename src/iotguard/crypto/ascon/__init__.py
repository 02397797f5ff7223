"""Ascon lightweight cryptography (NIST SP 800-232).

Two forms of the same algorithms:

* scalar functions for devices and single messages: :func:`aead_encrypt`,
  :func:`aead_decrypt`, :func:`hash256`, :func:`xof128`, :func:`cxof128`;
* batched NumPy functions for the hub: :func:`aead_encrypt_batch`,
  :func:`aead_decrypt_batch`, :func:`hash256_batch`, :func:`xof128_batch`,
  :func:`cxof128_batch`.

:class:`AsconAead128Suite` plugs Ascon-AEAD128 into the AEAD suite registry
as ``"ascon-aead128"``.
"""

from iotguard.crypto.ascon._parameters import (
    KEY_SIZE,
    MAX_CUSTOMIZATION_SIZE,
    MAX_MESSAGES_PER_KEY,
    MAX_XOF_OUTPUT,
    NONCE_SIZE,
    TAG_SIZE,
)
from iotguard.crypto.ascon.aead import aead_decrypt, aead_encrypt
from iotguard.crypto.ascon.batch import (
    BATCH_BUFFER_BYTES,
    BATCH_CHUNK_LANES,
    MAX_BATCH_MESSAGE_SIZE,
    aead_decrypt_batch,
    aead_encrypt_batch,
    cxof128_batch,
    hash256_batch,
    xof128_batch,
)
from iotguard.crypto.ascon.hashing import HASH256_SIZE, cxof128, hash256, xof128
from iotguard.crypto.ascon.suite import AsconAead128Suite

__all__ = [
    "BATCH_BUFFER_BYTES",
    "BATCH_CHUNK_LANES",
    "HASH256_SIZE",
    "KEY_SIZE",
    "MAX_BATCH_MESSAGE_SIZE",
    "MAX_CUSTOMIZATION_SIZE",
    "MAX_MESSAGES_PER_KEY",
    "MAX_XOF_OUTPUT",
    "NONCE_SIZE",
    "TAG_SIZE",
    "AsconAead128Suite",
    "aead_decrypt",
    "aead_decrypt_batch",
    "aead_encrypt",
    "aead_encrypt_batch",
    "cxof128",
    "cxof128_batch",
    "hash256",
    "hash256_batch",
    "xof128",
    "xof128_batch",
]
