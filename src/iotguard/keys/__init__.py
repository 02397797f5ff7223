"""Key custody: the ``KeyStore`` protocol and its backends.

Backends: :class:`SoftwareKeyStore` (software secure element with tamper
response and device binding), :class:`Pkcs11KeyStore` (any PKCS#11 HSM;
tested with SoftHSM2) and :class:`~iotguard.keys.puf.PufKeyStore` (keys
re-derived from a PUF). :func:`open_key_store` builds one from configuration.
"""

from iotguard.keys.config import KeyStoreConfig, open_key_store
from iotguard.keys.keystore import KeyKind, KeyStore, TamperRecord, TamperResponsive, tamper_record_of
from iotguard.keys.pkcs11 import Pkcs11KeyStore
from iotguard.keys.puf import PufKeyStore
from iotguard.keys.software import SoftwareKeyStore, platform_device_binding

__all__ = [
    "KeyKind",
    "KeyStore",
    "KeyStoreConfig",
    "Pkcs11KeyStore",
    "PufKeyStore",
    "SoftwareKeyStore",
    "TamperRecord",
    "TamperResponsive",
    "open_key_store",
    "platform_device_binding",
    "tamper_record_of",
]
