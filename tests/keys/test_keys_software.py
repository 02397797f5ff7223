"""Software secure element: tamper response and cloning resistance."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.errors import ConfigError, KeyStoreError, TamperError
from iotguard.keys import (
    KeyKind,
    SoftwareKeyStore,
    TamperResponsive,
    open_key_store,
    platform_device_binding,
    tamper_record_of,
)
from iotguard.keys.config import KeyStoreConfig

from .conftest import BINDING

OTHER_DEVICE = b"test device binding: fuse 0002"
WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _populated(directory: Path, binding: bytes = BINDING) -> SoftwareKeyStore:
    store = SoftwareKeyStore(directory, device_binding=binding)
    store.generate("id", KeyKind.ED25519)
    store.generate("kx", KeyKind.X25519)
    store.generate("wrap", KeyKind.AES256)
    store.advance_counter("fw", 3)
    return store


def _assert_refuses_everything(store: SoftwareKeyStore) -> None:
    operations = [
        lambda: store.generate("new", KeyKind.ED25519),
        lambda: store.has_key("id"),
        lambda: store.public_key("id"),
        lambda: store.sign("id", b"m"),
        lambda: store.derive("kx", b"\x09" * 32, salt=b"", info=b"", length=32),
        lambda: store.seal("wrap", b"x"),
        lambda: store.unseal("wrap", b"\x00" * 40),
        lambda: store.counter("fw"),
        lambda: store.advance_counter("fw", 10),
        lambda: store.delete("id"),
        lambda: store.zeroize(),
        lambda: store.require_untampered(),
    ]
    for op in operations:
        with pytest.raises(TamperError):
            op()


def test_tamper_event_zeroizes_persists_a_record_and_refuses_every_operation(tmp_path: Path) -> None:
    store = _populated(tmp_path / "ks")
    assert isinstance(store, TamperResponsive)
    assert tamper_record_of(store) is None
    store.require_untampered()

    record = store.tamper_event("enclosure_open", now=WHEN)

    assert record.reason == "enclosure_open"
    assert record.detected_at == WHEN
    assert tamper_record_of(store) == record
    _assert_refuses_everything(store)
    # Crypto-erased: only the tamper record is left on disk.
    assert sorted(p.name for p in (tmp_path / "ks").iterdir()) == ["tamper.cbor"]
    reopened = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    assert reopened.tamper_record == record
    _assert_refuses_everything(reopened)


def test_tamper_event_is_idempotent(tmp_path: Path) -> None:
    store = _populated(tmp_path / "ks")
    first = store.tamper_event("enclosure_open", now=WHEN)
    assert store.tamper_event("voltage_glitch") == first


def test_tamper_error_has_the_tampered_code(tmp_path: Path) -> None:
    store = _populated(tmp_path / "ks")
    store.tamper_event("enclosure_open")
    with pytest.raises(TamperError) as info:
        store.sign("id", b"m")
    assert info.value.code == "tampered"
    assert isinstance(info.value, KeyStoreError)


def test_integrity_failure_on_open_triggers_the_tamper_response(tmp_path: Path) -> None:
    _populated(tmp_path / "ks")
    sealed = tmp_path / "ks" / "keystore.sealed"
    blob = bytearray(sealed.read_bytes())
    blob[40] ^= 0x01
    sealed.write_bytes(bytes(blob))

    store = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)

    assert store.tamper_record is not None
    assert store.tamper_record.reason == "integrity_check_failed"
    _assert_refuses_everything(store)
    assert not (tmp_path / "ks" / "root.secret").exists()


@pytest.mark.parametrize(
    ("removed", "reason"),
    [("root.secret", "root_secret_missing"), ("keystore.sealed", "sealed_store_missing")],
)
def test_a_missing_half_of_the_store_is_tampering(tmp_path: Path, removed: str, reason: str) -> None:
    _populated(tmp_path / "ks")
    (tmp_path / "ks" / removed).unlink()
    store = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    assert store.tamper_record is not None and store.tamper_record.reason == reason


def test_unreadable_tamper_record_still_means_tampered(tmp_path: Path) -> None:
    store = _populated(tmp_path / "ks")
    store.tamper_event("enclosure_open")
    (tmp_path / "ks" / "tamper.cbor").write_bytes(b"\xff garbage")
    reopened = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    assert reopened.tamper_record is not None
    assert reopened.tamper_record.reason == "tamper_record_unreadable"


def test_deleting_the_tamper_record_does_not_bring_the_keys_back(tmp_path: Path) -> None:
    store = _populated(tmp_path / "ks")
    store.tamper_event("enclosure_open")
    (tmp_path / "ks" / "tamper.cbor").unlink()
    fresh = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    assert fresh.tamper_record is None
    assert not fresh.has_key("id")
    assert fresh.counter("fw") == 0


def test_attack_cloned_device(tmp_path: Path) -> None:
    """Check for a cloned device: the copied key-store directory does not work on another device."""
    original = _populated(tmp_path / "device-a")
    public = original.public_key("id")
    shutil.copytree(tmp_path / "device-a", tmp_path / "device-b")

    clone = SoftwareKeyStore(tmp_path / "device-b", device_binding=OTHER_DEVICE)

    assert clone.tamper_record is not None
    assert clone.tamper_record.reason == "integrity_check_failed"
    with pytest.raises(TamperError):
        clone.sign("id", b"impersonation")
    # The genuine device is unaffected.
    again = SoftwareKeyStore(tmp_path / "device-a", device_binding=BINDING)
    assert again.public_key("id") == public
    again.require_untampered()


def test_attack_cloned_device_with_default_platform_binding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check for a cloned device without an explicit binding: the per-install secret differs."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-a"))
    original = SoftwareKeyStore(tmp_path / "device-a")
    original.generate("id", KeyKind.ED25519)
    assert (tmp_path / "state-a" / "iotguard" / "device.secret").exists()
    shutil.copytree(tmp_path / "device-a", tmp_path / "device-b")

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-b"))
    clone = SoftwareKeyStore(tmp_path / "device-b")
    with pytest.raises(TamperError):
        clone.sign("id", b"m")

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-a"))
    SoftwareKeyStore(tmp_path / "device-a").sign("id", b"m")


def test_constructor_stays_backwards_compatible(tmp_path: Path) -> None:
    store = SoftwareKeyStore(tmp_path / "ks")
    store.generate("id", KeyKind.ED25519)
    assert SoftwareKeyStore(str(tmp_path / "ks")).has_key("id")


def test_device_secret_inside_the_store_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SoftwareKeyStore(tmp_path / "ks", device_secret_path=tmp_path / "ks" / "device.secret")


def test_short_device_binding_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SoftwareKeyStore(tmp_path / "ks", device_binding=b"short")


def test_platform_binding_is_stable_and_per_install(tmp_path: Path) -> None:
    a = platform_device_binding(tmp_path / "a.secret")
    assert a == platform_device_binding(tmp_path / "a.secret")
    assert a != platform_device_binding(tmp_path / "b.secret")
    assert (tmp_path / "a.secret").stat().st_mode & 0o077 == 0


def test_repr_shows_labels_and_state_only(tmp_path: Path) -> None:
    store = _populated(tmp_path / "ks")
    assert repr(store).endswith("keys=['id', 'kx', 'wrap'], state=ok)")
    store.tamper_event("enclosure_open")
    assert "state=tampered" in repr(store)


def test_open_key_store_by_config(tmp_path: Path) -> None:
    store = open_key_store(KeyStoreConfig(backend="software"), default_directory=tmp_path / "ks")
    assert isinstance(store, SoftwareKeyStore)
    with pytest.raises(ConfigError):
        open_key_store(KeyStoreConfig(backend="rot13"), default_directory=tmp_path)
    with pytest.raises(ConfigError):
        open_key_store(KeyStoreConfig(backend="software"))


def test_unwritable_device_secret_location_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigError):
        platform_device_binding(blocker / "sub" / "device.secret")


def test_processes_sharing_a_store_lose_no_keys(tmp_path: Path) -> None:
    """Hub processes share one data directory: neither overwrites the other's keys (lost update), and a
    key one destroys (crypto-shredding a data subject, ADR 0405) is gone for the other at once."""
    a = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    b = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    a.generate("k-a", KeyKind.AES256)
    b.generate("k-b", KeyKind.AES256)  # b re-reads the file first: k-a survives b's write
    sealed = a.seal("k-b", b"reading key")  # a finds b's key on disk
    assert b.unseal("k-b", sealed) == b"reading key"
    b.delete("k-a")
    assert not a.has_key("k-a")
    with pytest.raises(KeyStoreError):
        a.seal("k-a", b"x")
    a.advance_counter("c", 3)  # a's write must not bring k-a back
    reopened = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    assert reopened.has_key("k-b") and not reopened.has_key("k-a") and reopened.counter("c") == 3


def test_generate_many_writes_the_sealed_file_once_for_all_keys(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A fleet's first readings create one subject key each; one rewrite of the whole store per key
    # made the hub fall behind in the 10,000-device soak (O(keys^2)).
    store = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    saves = []
    real_save = store._save
    monkeypatch.setattr(store, "_save", lambda: (saves.append(1), real_save())[1])
    labels = [f"k{i}" for i in range(50)]
    assert store.generate_many(labels, KeyKind.AES256) == [b""] * 50
    assert len(saves) == 1
    reopened = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    assert all(reopened.has_key(label) for label in labels)
    assert reopened.unseal("k7", store.seal("k7", b"secret")) == b"secret"


def test_generate_many_is_all_or_none(tmp_path: Path) -> None:
    store = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    store.generate("taken", KeyKind.AES256)
    with pytest.raises(KeyStoreError):
        store.generate_many(["a", "taken", "b"], KeyKind.AES256)
    with pytest.raises(KeyStoreError):
        store.generate_many(["c", "c"], KeyKind.AES256)
    assert not any(store.has_key(label) for label in ("a", "b", "c"))
    assert len(store.generate_many(["e1", "e2"], KeyKind.ED25519)[1]) == 32


def test_a_rewrite_between_reading_and_recording_the_file_is_not_missed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Lost-update race seen with three hub processes: a reader re-reads the sealed file, another
    process rewrites it before the reader records which version it holds; the reader must not take
    the new version for the one it read, or its next write drops the other's key (KeyStoreError for
    every later batch sealed under it)."""
    reader = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    writer = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    writer.generate("first", KeyKind.AES256)
    real_load = reader._load_state
    interleaved: list[int] = []

    def load_then_other_process_writes(raw: bytes, signature: object) -> None:
        if not interleaved:
            interleaved.append(1)
            writer.generate("other", KeyKind.AES256)  # lands after the read, before it is recorded
        real_load(raw, signature)  # type: ignore[arg-type]

    monkeypatch.setattr(reader, "_load_state", load_then_other_process_writes)
    assert reader.has_key("first")  # refreshes: the interleaved write happens here
    assert interleaved
    reader.generate("mine", KeyKind.AES256)
    reopened = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    assert reopened.has_key("other") and reopened.has_key("mine") and reopened.has_key("first")


def test_a_rewrite_with_the_same_inode_size_and_mtime_is_seen(tmp_path: Path) -> None:
    """A rewrite can reuse the freed inode, keep the size (one key added, one deleted) and land within
    one mtime tick: the version check must still see it (the blob's random nonce differs)."""
    import os

    a = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    b = SoftwareKeyStore(tmp_path / "ks", device_binding=BINDING)
    a.generate("x", KeyKind.AES256)
    assert b.has_key("x")  # b now holds this version of the file
    path = tmp_path / "ks" / "keystore.sealed"
    old = tmp_path / "ks" / "old-inode"
    os.link(path, old)  # keep b's inode alive, to give it the new content below
    before = path.stat()
    a.delete("x")
    a.generate("y", KeyKind.AES256)  # same size as before: one AES key under a one-letter label
    old.write_bytes(path.read_bytes())  # the new content in the old inode (what inode reuse does)
    os.utime(old, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(old, path)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    if after.st_size != before.st_size:
        pytest.skip("the two states encode to different sizes here")
    assert b.has_key("y") and not b.has_key("x")
