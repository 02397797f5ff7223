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

__all__ = [
    "AeadSuite",
    "AesGcmSuite",
    "ChaCha20Poly1305Suite",
    "OpenRequest",
    "get_suite",
    "register_suite",
    "suite_names",
]
