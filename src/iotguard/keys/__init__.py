"""Key custody: the ``KeyStore`` protocol and its backends.

Backends: :class:`SoftwareKeyStore` (software secure element with tamper
response and device binding), :class:`Pkcs11KeyStore` (any PKCS#11 HSM;
tested with SoftHSM2) and :class:`~iotguard.keys.puf.PufKeyStore` (keys
re-derived from a PUF). :func:`open_key_store` builds one from configuration.

Roots of trust (PCRs, attestation key, quotes): :class:`RootOfTrust`, the
software store's :class:`SoftwareRootOfTrust` and :class:`TpmRootOfTrust`
(TPM 2.0; ``tpm2_pytss`` is imported only when one is opened).
"""

from iotguard.keys.config import KeyStoreConfig, open_key_store
from iotguard.keys.keystore import KeyKind, KeyStore, TamperRecord, TamperResponsive, tamper_record_of
from iotguard.keys.pkcs11 import Pkcs11KeyStore
from iotguard.keys.puf import PufKeyStore
from iotguard.keys.rot import AttestationKey, AttestationKeyAlgorithm, Quote, QuoteFormat, RootOfTrust, root_of_trust_of
from iotguard.keys.software import SoftwareKeyStore, platform_device_binding
from iotguard.keys.software_rot import SoftwareRootOfTrust
from iotguard.keys.tpm import TpmRootOfTrust

__all__ = [
    "AttestationKey",
    "AttestationKeyAlgorithm",
    "KeyKind",
    "KeyStore",
    "KeyStoreConfig",
    "Pkcs11KeyStore",
    "PufKeyStore",
    "Quote",
    "QuoteFormat",
    "RootOfTrust",
    "SoftwareKeyStore",
    "SoftwareRootOfTrust",
    "TamperRecord",
    "TamperResponsive",
    "TpmRootOfTrust",
    "open_key_store",
    "platform_device_binding",
    "root_of_trust_of",
    "tamper_record_of",
]
