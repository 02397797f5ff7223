"""The one contract every ``KeyStore`` backend passes (software, PKCS#11/SoftHSM2, PUF)."""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Iterable

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotguard.errors import IntegrityError, KeyStoreError
from iotguard.keys import KeyKind, KeyStore

from .conftest import Backend


def test_store_satisfies_the_protocol(backend: Backend) -> None:
    assert isinstance(backend.store(), KeyStore)


@pytest.mark.parametrize("kind", list(KeyKind))
def test_generate_then_has_key_and_public_key(backend: Backend, kind: KeyKind) -> None:
    store = backend.store()
    assert not store.has_key("k")
    public = store.generate("k", kind)
    assert store.has_key("k")
    if kind is KeyKind.AES256:
        assert public == b""
        with pytest.raises(KeyStoreError):
            store.public_key("k")
    else:
        assert len(public) == 32
        assert store.public_key("k") == public


def test_sign_verifies_with_cryptography(backend: Backend) -> None:
    store = backend.store()
    public = store.generate("id", KeyKind.ED25519)
    signature = store.sign("id", b"reading 42")
    assert len(signature) == 64
    Ed25519PublicKey.from_public_bytes(public).verify(signature, b"reading 42")


def test_derive_agrees_with_a_peer(backend: Backend) -> None:
    store = backend.store()
    public = store.generate("kx", KeyKind.X25519)
    peer = X25519PrivateKey.generate()
    ours = store.derive("kx", peer.public_key().public_bytes_raw(), salt=b"s", info=b"i", length=32)
    shared = peer.exchange(X25519PublicKey.from_public_bytes(public))
    assert ours == HKDF(hashes.SHA256(), 32, salt=b"s", info=b"i").derive(shared)


def test_derive_rejects_a_malformed_peer_key(backend: Backend) -> None:
    store = backend.store()
    store.generate("kx", KeyKind.X25519)
    with pytest.raises(KeyStoreError):
        store.derive("kx", b"\x01" * 31, salt=b"", info=b"", length=32)


def test_seal_round_trip_and_tamper_is_integrity_error(backend: Backend) -> None:
    store = backend.store()
    store.generate("wrap", KeyKind.AES256)
    sealed = store.seal("wrap", b"secret config", b"ad")
    assert b"secret config" not in sealed
    assert store.unseal("wrap", sealed, b"ad") == b"secret config"
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(IntegrityError):
        store.unseal("wrap", bytes(flipped), b"ad")
    with pytest.raises(IntegrityError):
        store.unseal("wrap", sealed, b"other ad")
    with pytest.raises(IntegrityError):
        store.unseal("wrap", sealed[:20], b"ad")


def test_seal_uses_fresh_nonces(backend: Backend) -> None:
    store = backend.store()
    store.generate("wrap", KeyKind.AES256)
    assert store.seal("wrap", b"x") != store.seal("wrap", b"x")


def test_counters_are_monotonic_and_persistent(backend: Backend) -> None:
    store = backend.store()
    assert store.counter("fw") == 0
    assert store.advance_counter("fw", 5) == 5
    assert store.advance_counter("fw", 3) == 5
    assert store.counter("fw") == 5
    assert store.advance_counter("fw", 9) == 9
    assert store.counter("other") == 0
    assert backend.store().counter("fw") == 9


def test_keys_persist_across_reopen(backend: Backend) -> None:
    store = backend.store()
    public = store.generate("id", KeyKind.ED25519)
    store.generate("wrap", KeyKind.AES256)
    sealed = store.seal("wrap", b"payload")
    again = backend.store()
    assert again.public_key("id") == public
    Ed25519PublicKey.from_public_bytes(public).verify(again.sign("id", b"m"), b"m")
    assert again.unseal("wrap", sealed) == b"payload"


def test_label_cannot_be_overwritten(backend: Backend) -> None:
    store = backend.store()
    public = store.generate("id", KeyKind.ED25519)
    for kind in KeyKind:
        with pytest.raises(KeyStoreError):
            store.generate("id", kind)
    assert store.public_key("id") == public


def test_operations_check_the_key_kind(backend: Backend) -> None:
    store = backend.store()
    store.generate("id", KeyKind.ED25519)
    store.generate("wrap", KeyKind.AES256)
    with pytest.raises(KeyStoreError):
        store.seal("id", b"x")
    with pytest.raises(KeyStoreError):
        store.sign("wrap", b"x")
    with pytest.raises(KeyStoreError):
        store.derive(
            "id", X25519PrivateKey.generate().public_key().public_bytes_raw(), salt=b"", info=b"", length=16
        )


def test_missing_key_raises(backend: Backend) -> None:
    store = backend.store()
    with pytest.raises(KeyStoreError):
        store.sign("nope", b"x")
    with pytest.raises(KeyStoreError):
        store.public_key("nope")


def test_delete_destroys_one_key(backend: Backend) -> None:
    store = backend.store()
    store.generate("a", KeyKind.ED25519)
    store.generate("b", KeyKind.ED25519)
    store.delete("a")
    store.delete("missing")
    assert not store.has_key("a")
    assert store.has_key("b")
    with pytest.raises(KeyStoreError):
        store.sign("a", b"x")
    assert not backend.store().has_key("a")


def test_regenerated_label_is_a_new_key(backend: Backend) -> None:
    store = backend.store()
    first = store.generate("a", KeyKind.ED25519)
    store.delete("a")
    assert store.generate("a", KeyKind.ED25519) != first


def test_zeroize_destroys_every_key_and_keeps_counters(backend: Backend) -> None:
    store = backend.store()
    for kind in KeyKind:
        store.generate(kind.value, kind)
    store.advance_counter("fw", 7)
    store.zeroize()
    assert not any(store.has_key(kind.value) for kind in KeyKind)
    again = backend.store()
    assert not any(again.has_key(kind.value) for kind in KeyKind)
    assert again.counter("fw") == 7


def test_store_cannot_be_pickled_or_copied(backend: Backend) -> None:
    store = backend.store()
    store.generate("id", KeyKind.ED25519)
    with pytest.raises(TypeError):
        pickle.dumps(store)
    with pytest.raises(TypeError):
        copy.copy(store)


# -- named attack: key extraction ----------------------------------------------


def _windows(blob: bytes) -> Iterable[bytes]:
    for i in range(max(0, len(blob) - 31)):
        yield blob[i : i + 32]


def _blobs(value: object) -> list[bytes]:
    """Byte strings a value exposes: bytes as is, text plus any hex runs in it."""
    if isinstance(value, bytes | bytearray | memoryview):
        return [bytes(value)]
    text = value if isinstance(value, str) else repr(value)
    out = [text.encode()]
    out += [bytes.fromhex(run) for run in re.findall(r"(?:[0-9a-fA-F]{2}){32,}", text)]
    return out


class _Oracle:
    """Recognises any 32-byte window that *is* one of the store's secret keys."""

    def __init__(self, ed_public: bytes, x_public: bytes, sealed: bytes) -> None:
        self.ed_public = ed_public
        self.x_public = x_public
        self.sealed = sealed

    def leaks(self, blob: bytes) -> bool:
        for w in _windows(blob):
            if Ed25519PrivateKey.from_private_bytes(w).public_key().public_bytes_raw() == self.ed_public:
                return True
            if X25519PrivateKey.from_private_bytes(w).public_key().public_bytes_raw() == self.x_public:
                return True
            try:
                AESGCM(w).decrypt(self.sealed[:12], self.sealed[12:], b"")
                return True
            except InvalidTag:
                pass
        return False


def test_attack_key_extraction_no_api_returns_private_key_bytes(backend: Backend) -> None:
    """Check for key extraction: nothing the store returns or shows contains a private key."""
    store = backend.store()
    ed = store.generate("id", KeyKind.ED25519)
    x = store.generate("kx", KeyKind.X25519)
    store.generate("wrap", KeyKind.AES256)
    sealed = store.seal("wrap", b"probe")
    oracle = _Oracle(ed, x, sealed)
    peer = X25519PrivateKey.generate().public_key().public_bytes_raw()

    observed: list[object] = [
        repr(store),
        str(store),
        store.public_key("id"),
        store.public_key("kx"),
        store.sign("id", b"probe"),
        store.sign("id", b""),
        store.derive("kx", peer, salt=b"", info=b"", length=32),
        store.derive("kx", peer, salt=b"", info=b"", length=64),
        sealed,
        store.unseal("wrap", sealed),
        store.counter("fw"),
    ]
    # Every error message on the way.
    for call in (
        lambda: store.sign("wrap", b"x"),
        lambda: store.seal("id", b"x"),
        lambda: store.public_key("wrap"),
        lambda: store.generate("id", KeyKind.ED25519),
        lambda: store.unseal("wrap", b"\x00" * 40),
    ):
        try:
            call()
        except Exception as exc:
            observed.append(str(exc))
            observed.append(repr(exc))
    # Every public attribute (not methods).
    for name in dir(store):
        if name.startswith("_"):
            continue
        value = getattr(store, name)
        if not callable(value):
            observed.append(value)
    # Whatever the backend writes to disk.
    if backend.directory is not None:
        observed += [p.read_bytes() for p in backend.directory.rglob("*") if p.is_file()]

    for value in observed:
        for blob in _blobs(value):
            assert not oracle.leaks(blob), f"private key material found in {type(value).__name__}"


def test_key_extraction_oracle_detects_a_leak() -> None:
    """The extraction check above is only meaningful if it recognises a leaked key."""
    ed = Ed25519PrivateKey.generate()
    x = X25519PrivateKey.generate()
    aes = AESGCM.generate_key(bit_length=256)
    sealed = b"\x00" * 12 + AESGCM(aes).encrypt(b"\x00" * 12, b"probe", b"")
    oracle = _Oracle(ed.public_key().public_bytes_raw(), x.public_key().public_bytes_raw(), sealed)
    for secret in (ed.private_bytes_raw(), x.private_bytes_raw(), aes):
        assert oracle.leaks(b"prefix" + secret + b"suffix")
        assert any(oracle.leaks(b) for b in _blobs(f"Key(secret={secret.hex()})"))
    assert not oracle.leaks(b"\x01" * 80)
