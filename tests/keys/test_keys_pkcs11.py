"""PKCS#11 backend against a real SoftHSM2 token."""

from __future__ import annotations

import logging
import uuid

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass

from iotguard.errors import ConfigError, KeyStoreError
from iotguard.keys import KeyKind, KeyStoreConfig, Pkcs11KeyStore, open_key_store

from .conftest import SoftHsmToken

pytestmark = pytest.mark.softhsm


def _store(token: SoftHsmToken, prefix: str | None = None) -> Pkcs11KeyStore:
    return Pkcs11KeyStore(
        token.module, token.label, token.pin, label_prefix=prefix or f"t-{uuid.uuid4().hex[:8]}/"
    )


def test_attack_key_extraction_keys_are_sensitive_and_not_extractable(softhsm: SoftHsmToken) -> None:
    """Check for key extraction at the token: private and secret values cannot be read."""
    with _store(softhsm, "extract/") as store:
        for kind in KeyKind:
            store.generate(kind.value, kind)
        lib = pkcs11.lib(softhsm.module)
        with lib.get_token(token_label=softhsm.label).open(rw=False) as session:
            objs = [
                o
                for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY)
                for o in session.get_objects({Attribute.CLASS: cls})
                if str(o[Attribute.LABEL]).startswith("extract/")
            ]
            assert len(objs) == 3
            for obj in objs:
                assert obj[Attribute.SENSITIVE] is True
                assert obj[Attribute.EXTRACTABLE] is False
                assert obj[Attribute.NEVER_EXTRACTABLE] is True
                with pytest.raises(pkcs11.AttributeSensitive):
                    obj[Attribute.VALUE]
        store.zeroize()


def test_pin_is_required_and_never_defaulted(softhsm: SoftHsmToken) -> None:
    with pytest.raises(ConfigError):
        Pkcs11KeyStore(softhsm.module, softhsm.label, "")
    with pytest.raises(ConfigError):
        Pkcs11KeyStore("", softhsm.label, softhsm.pin)


def test_from_env_reads_the_pin_from_the_environment(
    softhsm: SoftHsmToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IOTGUARD_PKCS11_PIN", raising=False)
    with pytest.raises(ConfigError):
        Pkcs11KeyStore.from_env(softhsm.module, softhsm.label)
    monkeypatch.setenv("IOTGUARD_PKCS11_PIN", softhsm.pin)
    monkeypatch.setenv("IOTGUARD_PKCS11_MODULE", softhsm.module)
    monkeypatch.setenv("IOTGUARD_PKCS11_TOKEN", softhsm.label)
    config = KeyStoreConfig(backend="pkcs11", label_prefix=f"env-{uuid.uuid4().hex[:6]}/")
    store = open_key_store(config)
    assert isinstance(store, Pkcs11KeyStore)
    store.generate("id", KeyKind.ED25519)
    store.zeroize()
    store.close()


def test_pin_never_appears_in_repr_errors_or_logs(
    softhsm: SoftHsmToken, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = _store(softhsm)
    texts = [repr(store), str(store)]
    try:
        Pkcs11KeyStore(softhsm.module, "no-such-token", softhsm.pin)
    except KeyStoreError as exc:
        texts.append(str(exc))
    texts.append(caplog.text)
    assert all(softhsm.pin not in t for t in texts)
    store.close()


def test_unknown_token_raises_key_store_error(softhsm: SoftHsmToken) -> None:
    with pytest.raises(KeyStoreError):
        Pkcs11KeyStore(softhsm.module, "no-such-token", softhsm.pin)


def test_label_prefix_isolates_stores_on_one_token(softhsm: SoftHsmToken) -> None:
    a, b = _store(softhsm), _store(softhsm)
    a.generate("id", KeyKind.ED25519)
    assert not b.has_key("id")
    b.zeroize()
    assert a.has_key("id")
    a.zeroize()
    a.close()
    b.close()


def test_counter_survives_a_stale_duplicate(softhsm: SoftHsmToken) -> None:
    """A crash between creating the new counter object and deleting the old leaves the maximum."""
    with _store(softhsm, "crash/") as store:
        store.advance_counter("fw", 4)
        lib = pkcs11.lib(softhsm.module)
        with lib.get_token(token_label=softhsm.label).open(rw=True) as session:
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.LABEL: "crash/counter/fw",
                    Attribute.APPLICATION: "iotguard-counter",
                    Attribute.VALUE: (2).to_bytes(8, "big"),
                }
            )
        assert store.counter("fw") == 4
        assert store.advance_counter("fw", 6) == 6
        assert store.counter("fw") == 6
