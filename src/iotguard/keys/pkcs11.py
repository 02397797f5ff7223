"""PKCS#11 key store: keys held by an HSM (any PKCS#11 module; tested with SoftHSM2).

Keys are generated on the token as *sensitive, non-extractable* token
objects, so the private and secret values never leave the HSM:

========== ================================================================
kind       token objects and mechanisms
========== ================================================================
Ed25519    ``CKK_EC_EDWARDS`` key pair (curve OID 1.3.101.112), ``CKM_EDDSA``
X25519     key pair on curve OID 1.3.101.110 (SoftHSM2 files it under
           ``CKK_EC_EDWARDS``), ``CKM_ECDH1_DERIVE`` into a short-lived
           session secret, then HKDF-SHA256 on the host
AES-256    ``CKK_AES`` secret key, ``CKM_AES_GCM`` (96-bit nonce, 128-bit tag)
counters   ``CKO_DATA`` objects (application ``iotguard-counter``); SoftHSM2
           keeps data values read-only, so advancing creates the new value
           first and then destroys older ones, and reading takes the maximum
           — a crash in between never lowers a counter
========== ================================================================

Every object label carries a prefix (``iotguard/`` by default) so iotguard
can share a token with other applications and never touches their objects.
The user PIN is a constructor argument (or read by :meth:`Pkcs11KeyStore.from_env`
from ``IOTGUARD_PKCS11_PIN``); it is used once to log in, never stored on the
object, never logged and never defaulted.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any, NoReturn

import pkcs11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pkcs11 import KDF, Attribute, GCMParams, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from iotguard.errors import ConfigError, IntegrityError, KeyStoreError
from iotguard.keys.keystore import KeyKind

__all__ = ["PIN_ENV", "Pkcs11KeyStore"]

#: Environment variables read by :meth:`Pkcs11KeyStore.from_env`.
PIN_ENV = "IOTGUARD_PKCS11_PIN"
MODULE_ENV = "IOTGUARD_PKCS11_MODULE"
TOKEN_ENV = "IOTGUARD_PKCS11_TOKEN"  # noqa: S105 - a variable name, not a secret

_ED25519_PARAMS = encode_named_curve_parameters("1.3.101.112")
_X25519_PARAMS = encode_named_curve_parameters("1.3.101.110")
_COUNTER_APP = "iotguard-counter"
_GCM_NONCE = 12
_GCM_TAG = 16
#: Longest label accepted (characters, prefix included).
MAX_LABEL_LENGTH = 128


def _raw_point(point: bytes) -> bytes:
    # PKCS#11 3.0 encodes Edwards/Montgomery points as a DER OCTET STRING.
    if len(point) == 34 and point[0] == 0x04 and point[1] == 0x20:
        return point[2:]
    if len(point) == 32:
        return point
    raise KeyStoreError("token returned a public point in an unknown encoding")


@dataclass(slots=True)
class _Handle:
    kind: KeyKind
    key: Any  # a pkcs11 PrivateKey or SecretKey object (a handle, not key material)
    public: bytes

    def __repr__(self) -> str:
        return f"_Handle({self.kind.value})"


class Pkcs11KeyStore:
    """A ``KeyStore`` on a PKCS#11 token.

    Args:
        module_path: Path of the PKCS#11 module (e.g.
            ``/usr/lib/softhsm/libsofthsm2.so``, or a vendor HSM library).
        token_label: Label of the token to use.
        pin: User PIN (required, never stored on the object or logged).
        label_prefix: Prefix of every object label this store creates.

    Raises:
        ConfigError: missing module path, token label or PIN.
        KeyStoreError: the module cannot be loaded, the token is absent, or
            login failed.
    """

    def __init__(
        self, module_path: str, token_label: str, pin: str, *, label_prefix: str = "iotguard/"
    ) -> None:
        if not module_path or not token_label:
            raise ConfigError("PKCS#11 module path and token label are required")
        if not pin:
            raise ConfigError("a PKCS#11 user PIN is required (there is no default)")
        self._token_label = token_label
        self._prefix = label_prefix
        self._lock = threading.RLock()
        self._handles: dict[str, _Handle] = {}
        try:
            lib = pkcs11.lib(module_path)
            token = lib.get_token(token_label=token_label)
            try:
                self._session = token.open(user_pin=pin, rw=True)
            except pkcs11.UserAlreadyLoggedIn:
                # PKCS#11 login is per process: another store of this process
                # already logged in to the token, so this session shares it.
                self._session = token.open(rw=True)
        except pkcs11.PinIncorrect:
            raise KeyStoreError("PKCS#11 login failed") from None
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
            raise KeyStoreError(f"cannot open PKCS#11 token {token_label!r}: {type(exc).__name__}") from None

    @classmethod
    def from_env(
        cls,
        module_path: str | None = None,
        token_label: str | None = None,
        *,
        pin_env: str = PIN_ENV,
        label_prefix: str = "iotguard/",
    ) -> Pkcs11KeyStore:
        """Open a store configured from the environment.

        ``IOTGUARD_PKCS11_MODULE`` and ``IOTGUARD_PKCS11_TOKEN`` fill in a
        missing module path or token label; the PIN is read from ``pin_env``.

        Raises:
            ConfigError: a value is missing.
            KeyStoreError: the token cannot be opened.
        """
        module = module_path or os.environ.get(MODULE_ENV, "")
        token = token_label or os.environ.get(TOKEN_ENV, "")
        pin = os.environ.get(pin_env, "")
        if not pin:
            raise ConfigError(f"set {pin_env} to the PKCS#11 user PIN")
        return cls(module, token, pin, label_prefix=label_prefix)

    def __repr__(self) -> str:
        return f"Pkcs11KeyStore(token={self._token_label!r}, prefix={self._prefix!r})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a key store cannot be pickled or copied")

    def close(self) -> None:
        """Log out and close the session."""
        with self._lock:
            self._handles.clear()
            self._session.close()

    def __enter__(self) -> Pkcs11KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- object lookup -------------------------------------------------------

    def _label(self, label: str) -> str:
        full = self._prefix + label
        if not label or len(full) > MAX_LABEL_LENGTH:
            raise KeyStoreError("key label is empty or too long")
        return full

    def _find(self, label: str) -> _Handle | None:
        cached = self._handles.get(label)
        if cached is not None:
            return cached
        full = self._label(label)
        found: list[Any] = list(self._session.get_objects({Attribute.LABEL: full}))
        secret = [o for o in found if o.object_class == ObjectClass.SECRET_KEY]
        private = [o for o in found if o.object_class == ObjectClass.PRIVATE_KEY]
        public = [o for o in found if o.object_class == ObjectClass.PUBLIC_KEY]
        if secret:
            handle = _Handle(KeyKind.AES256, secret[0], b"")
        elif private and public:
            params = bytes(public[0][Attribute.EC_PARAMS])
            if params == _ED25519_PARAMS:
                kind = KeyKind.ED25519
            elif params == _X25519_PARAMS:
                kind = KeyKind.X25519
            else:
                raise KeyStoreError(f"key {label!r} is on an unsupported curve")
            handle = _Handle(kind, private[0], _raw_point(bytes(public[0][Attribute.EC_POINT])))
        else:
            return None
        self._handles[label] = handle
        return handle

    def _get(self, label: str, kind: KeyKind) -> _Handle:
        with self._lock:
            handle = self._find(label)
        if handle is None:
            raise KeyStoreError(f"no key {label!r}")
        if handle.kind is not kind:
            raise KeyStoreError(f"key {label!r} is {handle.kind.value}, not {kind.value}")
        return handle

    # -- KeyStore ------------------------------------------------------------

    def generate(self, label: str, kind: KeyKind) -> bytes:
        """Create a sensitive, non-extractable key on the token; returns its public key.

        Raises:
            KeyStoreError: ``label`` exists already, or the token refused.
        """
        kind = KeyKind(kind)
        with self._lock:
            if self._find(label) is not None:
                raise KeyStoreError(f"key {label!r} exists")
            full = self._label(label)
            key_id = hashlib.sha256(full.encode()).digest()[:16]
            private_template = {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
            }
            try:
                if kind is KeyKind.AES256:
                    key = self._session.generate_key(
                        KeyType.AES,
                        256,
                        id=key_id,
                        label=full,
                        store=True,
                        capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                        template=private_template,
                    )
                    handle = _Handle(kind, key, b"")
                else:
                    ed = kind is KeyKind.ED25519
                    params = self._session.create_domain_parameters(
                        KeyType.EC_EDWARDS,
                        {Attribute.EC_PARAMS: _ED25519_PARAMS if ed else _X25519_PARAMS},
                        local=True,
                    )
                    pub, priv = params.generate_keypair(
                        id=key_id,
                        label=full,
                        store=True,
                        mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                        capabilities=(MechanismFlag.SIGN | MechanismFlag.VERIFY)
                        if ed
                        else MechanismFlag.DERIVE,
                        private_template=private_template,
                    )
                    handle = _Handle(kind, priv, _raw_point(bytes(pub[Attribute.EC_POINT])))
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"token refused to generate {kind.value}: {type(exc).__name__}") from None
            self._handles[label] = handle
            return handle.public

    def has_key(self, label: str) -> bool:
        """Whether a key named ``label`` exists on the token."""
        with self._lock:
            return self._find(label) is not None

    def public_key(self, label: str) -> bytes:
        """Raw public key bytes of an asymmetric key.

        Raises:
            KeyStoreError: no such key, or it is symmetric.
        """
        with self._lock:
            handle = self._find(label)
        if handle is None:
            raise KeyStoreError(f"no key {label!r}")
        if handle.kind is KeyKind.AES256:
            raise KeyStoreError(f"key {label!r} is symmetric and has no public key")
        return handle.public

    def sign(self, label: str, message: bytes) -> bytes:
        """Sign ``message`` with ``CKM_EDDSA`` (pure Ed25519).

        Raises:
            KeyStoreError: no such Ed25519 key, or the token failed.
        """
        handle = self._get(label, KeyKind.ED25519)
        with self._lock:
            try:
                return bytes(handle.key.sign(message, mechanism=Mechanism.EDDSA))
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"token failed to sign: {type(exc).__name__}") from None

    def derive(self, label: str, peer_public_key: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
        """X25519 agreement on the token, then HKDF-SHA256 on the host.

        The shared secret exists only as a short-lived session object that is
        destroyed right after HKDF.

        Raises:
            KeyStoreError: no such X25519 key, a bad peer key, or the token failed.
        """
        if len(peer_public_key) != 32:
            raise KeyStoreError("key agreement failed: peer key must be 32 bytes")
        handle = self._get(label, KeyKind.X25519)
        with self._lock:
            try:
                shared_obj = handle.key.derive_key(
                    KeyType.GENERIC_SECRET,
                    256,
                    mechanism=Mechanism.ECDH1_DERIVE,
                    mechanism_param=(KDF.NULL, None, peer_public_key),
                    template={
                        Attribute.SENSITIVE: False,
                        Attribute.EXTRACTABLE: True,
                        Attribute.TOKEN: False,
                    },
                )
                try:
                    shared = bytes(shared_obj[Attribute.VALUE])
                finally:
                    shared_obj.destroy()
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"key agreement failed: {type(exc).__name__}") from None
        if not any(shared):
            raise KeyStoreError("key agreement failed: low-order peer key")
        return HKDF(hashes.SHA256(), length, salt=salt, info=info).derive(shared)

    def seal(self, label: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """AES-256-GCM on the token; returns nonce || ciphertext || tag.

        Raises:
            KeyStoreError: no such AES key, or the token failed.
        """
        handle = self._get(label, KeyKind.AES256)
        nonce = secrets.token_bytes(_GCM_NONCE)
        with self._lock:
            try:
                ct = handle.key.encrypt(
                    plaintext,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, associated_data, 128),
                )
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"token failed to seal: {type(exc).__name__}") from None
        return nonce + bytes(ct)

    def unseal(self, label: str, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Reverse :meth:`seal`.

        Raises:
            IntegrityError: the blob or associated data was altered.
            KeyStoreError: no such AES key.
        """
        handle = self._get(label, KeyKind.AES256)
        if len(sealed) < _GCM_NONCE + _GCM_TAG:
            raise IntegrityError("sealed blob is truncated")
        with self._lock:
            try:
                pt = handle.key.decrypt(
                    sealed[_GCM_NONCE:],
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(sealed[:_GCM_NONCE], associated_data, 128),
                )
            except pkcs11.PKCS11Error:
                # Tokens report a bad GCM tag differently (SoftHSM2:
                # CKR_GENERAL_ERROR, others CKR_ENCRYPTED_DATA_INVALID).
                raise IntegrityError("sealed blob failed authentication") from None
        return bytes(pt)

    # -- counters -------------------------------------------------------------

    def _counter_objects(self, name: str) -> list[tuple[int, Any]]:
        label = self._label("counter/" + name)
        objs = self._session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label, Attribute.APPLICATION: _COUNTER_APP}
        )
        return [(int.from_bytes(bytes(o[Attribute.VALUE]), "big"), o) for o in objs]

    def counter(self, name: str) -> int:
        """Current value of a persistent monotonic counter (0 if never used).

        Raises:
            KeyStoreError: the token failed.
        """
        with self._lock:
            try:
                return max((v for v, _ in self._counter_objects(name)), default=0)
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"token failed to read a counter: {type(exc).__name__}") from None

    def advance_counter(self, name: str, to_at_least: int) -> int:
        """Raise counter ``name`` to at least ``to_at_least``, durably; returns the new value.

        Raises:
            KeyStoreError: the token failed, or the value does not fit 64 bits.
        """
        if to_at_least >= 1 << 64:
            raise KeyStoreError("counter value does not fit 64 bits")
        with self._lock:
            try:
                existing = self._counter_objects(name)
                current = max((v for v, _ in existing), default=0)
                if to_at_least <= current:
                    return current
                self._session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.DATA,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: True,
                        Attribute.LABEL: self._label("counter/" + name),
                        Attribute.APPLICATION: _COUNTER_APP,
                        Attribute.VALUE: int(to_at_least).to_bytes(8, "big"),
                    }
                )
                for _, obj in existing:
                    obj.destroy()
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"token failed to advance a counter: {type(exc).__name__}") from None
            return int(to_at_least)

    # -- destruction ----------------------------------------------------------

    def delete(self, label: str) -> None:
        """Destroy the key's objects on the token.

        Raises:
            KeyStoreError: the token failed.
        """
        with self._lock:
            self._handles.pop(label, None)
            full = self._label(label)
            try:
                for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY):
                    for obj in list(self._session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: full})):
                        obj.destroy()
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"token failed to delete a key: {type(exc).__name__}") from None

    def zeroize(self) -> None:
        """Destroy every key this store created (objects under its label prefix); counters survive.

        Raises:
            KeyStoreError: the token failed.
        """
        with self._lock:
            self._handles.clear()
            try:
                for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY):
                    for obj in list(self._session.get_objects({Attribute.CLASS: cls})):
                        if str(obj[Attribute.LABEL]).startswith(self._prefix):
                            obj.destroy()
            except pkcs11.PKCS11Error as exc:
                raise KeyStoreError(f"token failed to zeroize: {type(exc).__name__}") from None
