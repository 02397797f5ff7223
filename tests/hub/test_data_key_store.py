"""The data-key store contract on memory, SQLite and PostgreSQL, and the keyring on the memory twin: rows are
one per owner, a transaction's writes apply only on commit, shredding deletes a key's row and its wrapping key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotguard.errors import KeyStoreError
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.data_keys import (
    DataKeyConflict,
    DataKeyRow,
    DataKeyStore,
    SqlDataKeyStore,
    SubjectKeyring,
)
from iotguard.hub.stores.data_keys_memory import MemoryDataKeyStore
from iotguard.keys.software import SoftwareKeyStore
from iotguard.privacy.at_rest import kek_label, subject_owner

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def rows(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DataKeyStore]:
    if request.param == "memory":
        yield MemoryDataKeyStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlDataKeyStore(engine)
    engine.dispose()


def _r(owner: str, kid: int) -> DataKeyRow:
    return DataKeyRow(bytes([kid]) * 16, owner, b"wrapped-" + owner.encode(), T0)


def test_data_key_rows_contract(rows: DataKeyStore) -> None:
    with rows.transaction() as tx:
        rows.insert(tx, _r("subject:a", 1))
        rows.insert(tx, _r("device:d", 2))
        assert [r.owner for r in rows.rows_for(tx, ["subject:a", "subject:zz"])] == ["subject:a"]
    assert rows.count() == 2
    got = rows.row_by_owner("subject:a")
    assert got is not None and got.key_id == bytes([1]) * 16 and got.wrapped_key == b"wrapped-subject:a"
    assert got.created_at == T0
    assert rows.row_by_id(bytes([2]) * 16) == _r("device:d", 2)
    assert rows.row_by_owner("subject:none") is None and rows.row_by_id(b"\x09" * 16) is None
    # one row per owner, one owner per key id: a second insert is a conflict and the transaction is lost
    for dup in (_r("subject:a", 3), _r("subject:b", 1)):
        with pytest.raises(DataKeyConflict), rows.transaction() as tx:
            rows.insert(tx, dup)
    assert rows.count() == 2
    # a failed transaction writes nothing
    with pytest.raises(RuntimeError), rows.transaction() as tx:
        rows.insert(tx, _r("subject:c", 4))
        raise RuntimeError("erasure failed")
    assert rows.row_by_owner("subject:c") is None
    with rows.transaction() as tx:
        assert sorted(rows.lock_owners(tx, ["subject:a", "device:d", "subject:x"])) == [bytes([1]) * 16,
                                                                                        bytes([2]) * 16]
        assert rows.delete_owners(tx, ["subject:a", "device:d"]) == 2
    assert rows.count() == 0 and rows.row_by_id(bytes([1]) * 16) is None


def test_keyring_on_the_memory_store_creates_reuses_and_shreds(tmp_path: Path) -> None:
    keystore = SoftwareKeyStore(tmp_path / "keys")
    store = MemoryDataKeyStore()
    ring = SubjectKeyring(store, keystore)
    key = ring.key_for(subject_owner("alice"), T0)
    assert ring.key_for(subject_owner("alice"), T0).secret == key.secret and ring.key_count() == 1
    assert store.row_by_owner(subject_owner("alice")) is not None
    assert key.secret not in store.row_by_owner(subject_owner("alice")).wrapped_key  # type: ignore[union-attr]
    sealed = key.seal_document("export", b"alice's export")
    with store.transaction() as tx:
        assert ring.shred(tx, [subject_owner("alice")]) == 1
    assert ring.destroyed(key.key_id) and not keystore.has_key(kek_label(key.key_id))
    with pytest.raises(KeyStoreError):
        ring.key_by_id(key.key_id).open_document("export", sealed)
    with pytest.raises(Exception, match="not in a SQL database"):
        _ = ring.engine
