"""Key custody: the ``KeyStore`` protocol and its backends."""

from iotguard.keys.keystore import KeyKind, KeyStore
from iotguard.keys.software import SoftwareKeyStore

__all__ = ["KeyKind", "KeyStore", "SoftwareKeyStore"]
