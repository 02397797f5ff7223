"""One contract for the attestation store: in memory, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotguard.attestation import reference_release
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import migrate
from iotguard.hub.stores.attestation import AttestationStore, SqlAttestationStore, StoredAppraisal
from iotguard.hub.stores.attestation_memory import MemoryAttestationStore
from iotguard.keys.rot import AttestationKey, AttestationKeyAlgorithm

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
KEY_A = AttestationKey(AttestationKeyAlgorithm.EDDSA, b"\x30" + b"a" * 43)
KEY_B = AttestationKey(AttestationKeyAlgorithm.ES256, b"\x30" + b"b" * 90)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AttestationStore]:
    if request.param == "memory":
        yield MemoryAttestationStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlAttestationStore(engine)
    engine.dispose()


def test_a_nonce_is_taken_once_by_its_device_before_expiry(store: AttestationStore) -> None:
    store.issue_nonce("dev-1", b"n" * 32, T0 + timedelta(minutes=5))
    assert store.take_nonce("dev-2", b"n" * 32, T0) is False  # another device's nonce
    assert store.take_nonce("dev-1", b"n" * 32, T0) is True
    assert store.take_nonce("dev-1", b"n" * 32, T0) is False  # single use


def test_an_expired_nonce_is_refused_and_purged(store: AttestationStore) -> None:
    store.issue_nonce("dev-1", b"e" * 32, T0)
    store.issue_nonce("dev-1", b"f" * 32, T0 + timedelta(minutes=5))
    assert store.take_nonce("dev-1", b"e" * 32, T0 + timedelta(seconds=1)) is False
    store.issue_nonce("dev-1", b"g" * 32, T0)
    assert store.purge_nonces(T0 + timedelta(seconds=1)) == 1
    assert store.take_nonce("dev-1", b"f" * 32, T0 + timedelta(seconds=1)) is True


def test_the_first_key_bound_stays_bound(store: AttestationStore) -> None:
    assert store.key_of("dev-1") is None
    assert store.bind_key("dev-1", KEY_A, T0) == KEY_A
    assert store.bind_key("dev-1", KEY_B, T0) == KEY_A
    assert store.key_of("dev-1") == KEY_A
    assert store.bind_key("dev-2", KEY_B, T0) == KEY_B


def test_history_is_newest_first_per_device(store: AttestationStore) -> None:
    for i, status in enumerate(["affirming", "contraindicated", "warning"]):
        store.record(StoredAppraisal("dev-1", T0 + timedelta(seconds=i), status, (f"r{i}",), "1.0.0", "software"))
    store.record(StoredAppraisal("dev-2", T0, "affirming", (), "1.1.0", "tpm2"))
    got = store.history("dev-1")
    assert [a.status for a in got] == ["warning", "contraindicated", "affirming"]
    assert got[0].reasons == ("r2",) and got[0].appraised_at == T0 + timedelta(seconds=2)
    assert store.history("dev-1", limit=1)[0].status == "warning"
    assert store.history("dev-2")[0].keystore_kind == "tpm2"


def test_several_reference_releases_per_model(store: AttestationStore) -> None:
    digests = {"kernel": hashlib.sha256(b"k").digest(), "bootloader": hashlib.sha256(b"b").digest()}
    store.add_reference(reference_release("m", "1.0.0", digests), T0)
    store.add_reference(reference_release("m", "1.1.0", digests), T0)
    newer = {**digests, "kernel": hashlib.sha256(b"k2").digest()}
    store.add_reference(reference_release("m", "1.1.0", newer), T0)  # replaces
    got = store.references()
    assert [(r.model, r.version) for r in got] == [("m", "1.0.0"), ("m", "1.1.0")]
    assert dict(got[1].measurements) == newer
    assert store.remove_reference("m", "1.0.0") is True
    assert store.remove_reference("m", "1.0.0") is False
    assert [r.version for r in store.references()] == ["1.1.0"]


def test_policies_per_model(store: AttestationStore) -> None:
    store.set_policy("m", "[models.m]\n", T0)
    store.set_policy("m", "[models.m]\nmax_age_seconds = 60\n", T0)
    store.set_policy("n", "[models.n]\n", T0)
    assert store.policies() == {"m": "[models.m]\nmax_age_seconds = 60\n", "n": "[models.n]\n"}


def test_an_ak_is_certified_only_against_the_recorded_ek(store: AttestationStore) -> None:
    assert store.endorsement("dev-1") is None
    assert store.certify_key("dev-1", b"ek-1", KEY_B, T0) is False  # no EK recorded
    store.set_endorsement_key("dev-1", b"ek-1", T0)
    recorded = store.endorsement("dev-1")
    assert recorded is not None and recorded.ek_public == b"ek-1" and recorded.certified_key is None
    assert store.certify_key("dev-1", b"ek-other", KEY_B, T0) is False  # the EK changed meanwhile
    assert store.certify_key("dev-1", b"ek-1", KEY_B, T0) is True
    certified = store.endorsement("dev-1")
    assert certified is not None and certified.certified_key == KEY_B
    assert store.endorsement("dev-2") is None


def test_a_new_ek_forgets_the_ak_certified_against_the_old_one(store: AttestationStore) -> None:
    store.set_endorsement_key("dev-1", b"ek-1", T0)
    assert store.certify_key("dev-1", b"ek-1", KEY_B, T0)
    store.set_endorsement_key("dev-1", b"ek-2", T0)
    replaced = store.endorsement("dev-1")
    assert replaced is not None and replaced.ek_public == b"ek-2" and replaced.certified_key is None


def _in_transaction(store: AttestationStore, nonce: bytes, appraisal: StoredAppraisal) -> bool:
    engine = getattr(store, "engine", None)
    if engine is None:
        return store.conclude(None, "dev-1", nonce, T0, appraisal)
    with engine.begin() as tx:
        return store.conclude(tx, "dev-1", nonce, T0, appraisal)


def test_conclude_consumes_the_nonce_and_records_the_result_once(store: AttestationStore) -> None:
    """Replay: one nonce answers one appraisal, whose record is written with its consumption."""
    store.issue_nonce("dev-1", b"c" * 32, T0 + timedelta(minutes=5))
    store.issue_nonce("dev-2", b"d" * 32, T0 + timedelta(minutes=5))
    appraisal = StoredAppraisal("dev-1", T0, "affirming", (), "1.0.0", "software")
    assert store.nonce_pending("dev-1", b"c" * 32, T0) is True
    assert store.nonce_pending("dev-1", b"d" * 32, T0) is False  # another device's
    assert store.nonce_pending("dev-1", b"c" * 32, T0 + timedelta(minutes=5)) is False  # expired by then
    assert _in_transaction(store, b"c" * 32, appraisal) is True
    assert store.nonce_pending("dev-1", b"c" * 32, T0) is False
    assert _in_transaction(store, b"c" * 32, appraisal) is False  # single use
    assert _in_transaction(store, b"d" * 32, appraisal) is False  # issued to dev-2
    assert [a.status for a in store.history("dev-1")] == ["affirming"]


def test_a_rolled_back_conclusion_leaves_neither_record_nor_consumed_nonce(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    store = SqlAttestationStore(engine)
    store.issue_nonce("dev-1", b"r" * 32, T0 + timedelta(minutes=5))
    with pytest.raises(RuntimeError), engine.begin() as tx:
        assert store.conclude(tx, "dev-1", b"r" * 32, T0, StoredAppraisal("dev-1", T0, "affirming", (), "1", "x"))
        raise RuntimeError("a later write in the same transaction failed")
    assert store.history("dev-1") == [] and store.nonce_pending("dev-1", b"r" * 32, T0)
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_hub_processes_cannot_both_conclude_with_one_nonce(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Replay across hub processes: both saw the nonce pending; only the first transaction to commit keeps it."""
    import threading

    url = f"sqlite:///{tmp_path / 'hub.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engines = [make_engine(url), make_engine(url)]
    migrate(engines[0])
    first, second = (SqlAttestationStore(e) for e in engines)
    first.issue_nonce("dev-1", b"p" * 32, T0 + timedelta(minutes=5))
    assert first.nonce_pending("dev-1", b"p" * 32, T0) and second.nonce_pending("dev-1", b"p" * 32, T0)
    appraisal = StoredAppraisal("dev-1", T0, "affirming", (), "1.0.0", "software")
    outcome: list[bool] = []
    with engines[0].begin() as tx:
        outcome.append(first.conclude(tx, "dev-1", b"p" * 32, T0, appraisal))
        # The other process tries while the first has not committed yet (it waits for the lock, or fails).
        worker = threading.Thread(target=lambda: outcome.append(_conclude_in_own_transaction(second, appraisal)))
        worker.start()
        worker.join(timeout=0.5)
    worker.join(timeout=30)
    assert outcome == [True, False]
    assert [a.status for a in first.history("dev-1")] == ["affirming"]
    for engine in engines:
        engine.dispose()


def _conclude_in_own_transaction(store: SqlAttestationStore, appraisal: StoredAppraisal) -> bool:
    from sqlalchemy.exc import OperationalError

    try:
        with store.engine.begin() as tx:
            return store.conclude(tx, "dev-1", b"p" * 32, T0, appraisal)
    except OperationalError:  # SQLite: the database stayed locked by the first writer; nothing written
        return False
