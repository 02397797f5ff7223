"""A TUF signer whose private key stays in an iotguard :class:`KeyStore`.

The hub's online roles (snapshot, timestamp) sign with keys that live in its
key store (software secure element, PKCS#11 HSM); python-tuf only ever sees
this :class:`~securesystemslib.signer.Signer`, never key bytes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.signer import Key, SecretsHandler, Signature, Signer, SSlibKey

from iotguard.keys.keystore import KeyStore

__all__ = ["KeyStoreSigner", "ed25519_key"]


def ed25519_key(raw_public_key: bytes) -> SSlibKey:
    """The TUF key (``ed25519`` scheme, standard key id) of a raw Ed25519 public key."""
    return SSlibKey.from_crypto(Ed25519PublicKey.from_public_bytes(raw_public_key))


class KeyStoreSigner(Signer):
    """Signs TUF metadata with the Ed25519 key ``label`` inside ``keystore``."""

    def __init__(self, keystore: KeyStore, label: str) -> None:
        self._keystore = keystore
        self._label = label
        self._public_key = ed25519_key(keystore.public_key(label))

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> Signer:
        """Refuse URI loading: a key-store signer is built from a live key store.

        Raises:
            ValueError: always; no URI names a key inside an iotguard key store.
        """
        raise ValueError("KeyStoreSigner is constructed from a KeyStore, not a key URI")

    @property
    def public_key(self) -> Key:
        """The TUF public key of the store's key."""
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        """Sign ``payload`` inside the key store."""
        return Signature(self._public_key.keyid, self._keystore.sign(self._label, payload).hex())
