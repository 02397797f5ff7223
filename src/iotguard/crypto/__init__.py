"""Cryptographic suites, key derivation and hashes."""

from iotguard.crypto.aead import (
    AeadSuite,
    AesGcmSuite,
    ChaCha20Poly1305Suite,
    OpenRequest,
    get_suite,
    register_suite,
    suite_names,
)
from iotguard.crypto.ascon import AsconAead128Suite

__all__ = [
    "AeadSuite",
    "AesGcmSuite",
    "AsconAead128Suite",
    "ChaCha20Poly1305Suite",
    "OpenRequest",
    "get_suite",
    "register_suite",
    "suite_names",
]
