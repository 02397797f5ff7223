"""Data at rest per subject (ADR 0405): sealed readings, crypto-shredding erasure, audit pseudonyms,
purpose-bound access. Every test runs on SQLite and PostgreSQL through the hub's own composition root."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from iotguard.audit.verify import export_segment, verify_export
from iotguard.errors import KeyStoreError, PolicyDenied
from iotguard.hub.db import make_engine, metadata
from iotguard.hub.migrations import migrate
from iotguard.hub.privacy_store import PrivacyStore
from iotguard.hub.schema import readings
from iotguard.hub.services.data_access import DATA_ACCESSED, Reader
from iotguard.hub.stores.data_keys import SubjectKeyring, data_keys
from iotguard.hub.stores.subject_ledger import SqlSubjectLedgerStore, subject_ledger
from iotguard.hub.stores.telemetry import SqlTelemetryStore
from iotguard.privacy.at_rest import kek_label, subject_owner
from tests.hub.conftest import HubParts, make_hub

OPERATOR = Reader("otto", "operator", "api")
# Values that identify alice; none may be found anywhere once she is erased.
ALICE_LOCATION = "52.5201,13.4049"
ALICE_HEART_RATE = 187


@pytest.fixture(params=["sqlite", "postgres"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubParts]:
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    parts = make_hub(tmp_path, url)
    yield parts
    parts.store.engine.dispose()


def _body(purpose: str, heart_rate: int, location: str) -> bytes:
    return cbor2.dumps({"ts": 1_767_225_600_000, "f": {"heart_rate": heart_rate, "location": location},
                        "p": purpose}, canonical=True)


def _store(hub: HubParts, device_id: str, seq: int, body: bytes) -> None:
    """What ingest does after the envelope is opened and Cedar allowed the publish."""
    now = hub.services.clock.now()
    hub.store.store_batch([{"device_id": device_id, "epoch": 1, "seq": seq, "topic": f"t/{device_id}",
                            "received_at": now, "body": body}], [], {}, now=now)


def _fleet(hub: HubParts) -> None:
    """alice owns w1 (research consented), bob owns w2 (research consented), carol owns w3 (no consent)."""
    consent = hub.services.consent
    for device, subject in (("w1", "alice"), ("w2", "bob"), ("w3", "carol")):
        hub.registry.add_device(device, "wear-1")
        consent.link(subject, device)
    consent.change("alice", "research", True, actor="dpo")
    consent.change("bob", "research", True, actor="dpo")
    _store(hub, "w1", 1, _body("research", ALICE_HEART_RATE, ALICE_LOCATION))
    _store(hub, "w1", 2, _body("safety", ALICE_HEART_RATE, ALICE_LOCATION))
    _store(hub, "w2", 1, _body("research", 64, "48.1000,11.5000"))
    _store(hub, "w3", 1, _body("research", 71, "50.1100,8.6800"))
    hub.deliver()


def _dump(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every hub table: a database backup."""
    with engine.connect() as c:
        return {t.name: [dict(r._mapping) for r in c.execute(select(t))] for t in metadata.sorted_tables}


def _restore(backup: dict[str, list[dict[str, Any]]], hub: HubParts, tmp_path: Path) -> Engine:
    """The backup restored into an empty database of the same kind."""
    if hub.store.engine.dialect.name == "postgresql":
        server = hub.store.engine.url.set(database="postgres").render_as_string(hide_password=False)
        name = f"restore_{uuid.uuid4().hex[:10]}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        engine = make_engine(hub.store.engine.url.set(database=name).render_as_string(hide_password=False))
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'restored.db'}")
    migrate(engine)
    with engine.begin() as c:
        for t in metadata.sorted_tables:
            if backup.get(t.name):
                c.execute(t.delete())
                c.execute(t.insert(), backup[t.name])
    return engine


def _bytes_of(rows: dict[str, list[dict[str, Any]]]) -> bytes:
    return repr(rows).encode() + b"".join(v for t in rows.values() for r in t for v in r.values()
                                          if isinstance(v, bytes))


# -- sealed at rest ------------------------------------------------------------------


def test_reading_bodies_are_sealed_under_the_subjects_key(hub: HubParts) -> None:
    _fleet(hub)
    with hub.store.engine.connect() as c:
        stored = c.execute(select(readings.c.body, readings.c.key_id)).all()
    assert stored and all(key_id is not None for _b, key_id in stored)
    assert ALICE_LOCATION.encode() not in b"".join(bytes(b) for b, _k in stored)
    # The hub itself opens them (through the keyring in its key store).
    page = hub.services.data_access.read_readings(OPERATOR, "research")
    assert {i["device_id"] for i in page["items"]} == {"w1", "w2"}


def test_a_sealed_body_moved_to_another_row_does_not_open(hub: HubParts) -> None:
    """Check for a cut-and-paste attack on the table: the associated data binds device, epoch and seq."""
    _fleet(hub)
    with hub.store.engine.begin() as c:
        body, key_id = c.execute(select(readings.c.body, readings.c.key_id).where(
            readings.c.device_id == "w1", readings.c.seq == 1)).one()
        c.execute(readings.update().where(readings.c.device_id == "w1", readings.c.seq == 2)
                  .values(body=body, key_id=key_id))
    by_seq = {r.seq: r for r in hub.store.readings_of(["w1"])}
    assert not by_seq[1].sealed and by_seq[2].sealed and by_seq[2].body == b""


def test_clear_rows_from_before_migration_0311_are_sealed_in_place(hub: HubParts) -> None:
    hub.registry.add_device("w1", "wear-1")
    hub.services.consent.link("alice", "w1")
    with hub.store.engine.begin() as c:  # a row stored by a hub before the migration
        c.execute(readings.insert().values(device_id="w1", epoch=1, seq=9, topic="t/w1",
                                           received_at=datetime.now(UTC), body=_body("safety", 80, ALICE_LOCATION)))
    assert hub.store.clear_reading_count() == 1
    assert hub.services.consent.seal_clear_readings() == 1
    assert hub.store.clear_reading_count() == 0 and hub.services.consent.seal_clear_readings() == 0
    with hub.store.engine.connect() as c:
        assert ALICE_LOCATION.encode() not in bytes(c.execute(select(readings.c.body)).scalar_one())
    assert cbor2.loads(hub.store.readings_of(["w1"])[0].body)["f"]["location"] == ALICE_LOCATION


# -- erasure -------------------------------------------------------------------------------


def test_erasure_leaves_nothing_that_links_to_the_subject(hub: HubParts, tmp_path: Path) -> None:
    """After erasure no query, export, audit-log read, or restore of a database copy taken before the
    erasure (with the key store after it) links anything to the subject; the audit log still verifies."""
    _fleet(hub)
    services = hub.services
    privacy = services.consent.privacy
    privacy.record_contribution("alice", "dp-mean-hr-17", "mean heart rate, Berlin", services.clock.now())
    privacy.record_contribution("alice", "fl-model-3", "fall-detection model", services.clock.now(), kind="model")
    ledger = SqlSubjectLedgerStore(hub.store.engine)
    assert ledger.spend_all_within(["alice", "bob"], 1, "central", 5, 1000, "research", services.clock.now())
    sealed_export = privacy.seal_for_subject("alice", b'{"readings": "alice export"}', services.clock.now())
    alice_key = privacy.subject_keyring().existing_key(subject_owner("alice"))
    assert alice_key is not None
    log = services.audit.log
    trusted = log.publish_checkpoint()
    trusted_size = log.size()
    backup = _dump(hub.store.engine)  # taken before the erasure
    assert ALICE_LOCATION.encode() not in _bytes_of(backup)  # sealed even in the copy

    record = services.consent.erase("alice", actor="dpo")
    hub.deliver()
    assert record.key_shredded and record.readings_deleted == 2
    assert set(record.aggregates) == {"aggregate:dp-mean-hr-17", "model:fl-model-3"}
    assert record.pseudonym == alice_key.pseudonym()
    assert not services.keystore.has_key(kek_label(alice_key.key_id))  # destroyed in the key store
    with hub.store.engine.connect() as c:  # the subject's central/federated privacy loss is gone too
        assert {r[0] for r in c.execute(select(subject_ledger.c.subject_id))} == {"bob"}

    # No query: raw reads, the subject export, the k-anonymous export path.
    page = services.data_access.read_readings(OPERATOR, "research")
    assert {i["device_id"] for i in page["items"]} == {"w2"}
    doc = services.data_access.export_subject(Reader("pia", "privacy-officer", "api"), "alice")
    assert doc["readings"] == [] and doc["devices"] == [] and doc["consent"]["history"] == []
    assert doc["audit_pseudonym"] != record.pseudonym  # a fresh key: nothing ties it to the old one
    with pytest.raises(KeyStoreError):
        privacy.open_for_subject("alice", sealed_export)

    # No audit-log read: subject named only by the (now unlinkable) pseudonym; the log verifies
    # and is consistent with the checkpoint published before the erasure.
    entries = log.entries(0, log.size())
    assert not any(b"alice" in e for e in entries)
    assert any(record.pseudonym.encode() in e for e in entries)
    bundle = export_segment(log, 0, log.size(), log.publish_checkpoint(), prove_from=(trusted_size,))
    verify_export(bundle, log.verifier, trusted_checkpoint=trusted)

    # No restore: the pre-erasure copy, opened with the key store as it is after the erasure.
    restored = _restore(backup, hub, tmp_path)
    try:
        keyring = SubjectKeyring(restored, services.keystore)
        telemetry = SqlTelemetryStore(restored, cipher=keyring)
        opened = {r.device_id: r for r in telemetry.readings_of(["w1", "w2"])}
        assert opened["w1"].sealed and opened["w1"].body == b""  # alice's: unreadable
        assert not opened["w2"].sealed  # bob's: the backup still serves everyone else
        with pytest.raises(KeyStoreError):
            keyring.key_by_id(alice_key.key_id)
        with pytest.raises(KeyStoreError):  # the pseudonym cannot be recomputed from the copy
            keyring.existing_key(subject_owner("alice"))
        with pytest.raises(KeyStoreError):
            PrivacyStore(restored, keystore=services.keystore).open_for_subject("alice", sealed_export)
        with restored.connect() as c:
            assert c.execute(select(data_keys.c.key_id).where(data_keys.c.owner == subject_owner("alice"))
                             ).scalar() == alice_key.key_id  # the wrapped key is there, its wrapping key is not
    finally:
        restored.dispose()


def test_erasure_destroys_the_wrapping_key_in_the_key_store(hub: HubParts) -> None:
    """Crypto-shredding: deleting the wrapped key's row is not enough (a backup keeps it); the key
    that unwraps it must be gone from the key store, and only then does the report say ``shredded``."""
    _fleet(hub)
    keyring = hub.services.consent.privacy.subject_keyring()
    alice = keyring.existing_key(subject_owner("alice"))
    w1_before_link = None if alice is None else alice.key_id
    record = hub.services.consent.erase("alice", actor="dpo")
    assert record.key_shredded and w1_before_link is not None
    assert keyring.destroyed(w1_before_link)
    assert keyring.existing_key(subject_owner("alice")) is None
    assert keyring.existing_key(subject_owner("bob")) is not None  # nobody else's key is touched


def test_erasure_keeps_only_a_pseudonymous_proof(hub: HubParts) -> None:
    _fleet(hub)
    record = hub.services.consent.erase("alice", actor="dpo")
    privacy = hub.services.consent.privacy
    assert privacy.erasures_of("alice") == []  # no row names the subject
    kept = privacy.erasures_of(record.pseudonym)
    assert kept and kept[0]["readings_deleted"] == 2 and "w1" not in repr(kept)


# -- audit pseudonyms ------------------------------------------------------------------------


def test_audit_log_names_subjects_only_by_pseudonym(hub: HubParts) -> None:
    _fleet(hub)
    log = hub.services.audit.log
    consent_events = [e for e in log.entries(0, log.size()) if b"consent.changed" in e]
    assert len(consent_events) == 2
    assert not any(b"alice" in e or b"bob" in e or b"w1" in e for e in consent_events)
    privacy = hub.services.consent.privacy
    alice, bob = privacy.audit_name("alice", hub.services.clock.now()), privacy.audit_name("bob",
                                                                                         hub.services.clock.now())
    assert alice.startswith("subj-") and alice != bob
    assert log.find_subject(alice) and log.find_subject(bob)


# -- purpose-bound access --------------------------------------------------------------------


def test_viewer_sees_no_raw_readings(hub: HubParts) -> None:
    _fleet(hub)
    r = hub.client.get("/v1/telemetry", params={"purpose": "research"}, headers=hub.operator_token("viewer"))
    assert r.status_code == 403 and r.json()["error"] == "policy_denied"


def test_raw_read_without_a_purpose_is_refused(hub: HubParts) -> None:
    _fleet(hub)
    r = hub.client.get("/v1/telemetry", headers=hub.operator_token("operator"))
    assert r.status_code == 403 and r.json()["error"] == "policy_denied"


def test_raw_read_returns_only_declared_consented_purpose(hub: HubParts) -> None:
    _fleet(hub)
    r = hub.client.get("/v1/telemetry", params={"purpose": "research"}, headers=hub.operator_token("operator"))
    assert r.status_code == 200
    got = {(i["device_id"], i["seq"]) for i in r.json()["items"]}
    # w1 seq 2 was collected for safety; carol (w3) never consented to research.
    assert got == {("w1", 1), ("w2", 1)} and r.json()["withheld"] == 2


def test_raw_read_of_a_device_without_consent_is_refused(hub: HubParts) -> None:
    _fleet(hub)
    r = hub.client.get("/v1/telemetry", params={"purpose": "research", "device_id": "w3"},
                       headers=hub.operator_token("operator"))
    assert r.status_code == 403


def test_raw_read_for_an_undeclared_purpose_is_refused(hub: HubParts) -> None:
    _fleet(hub)
    with pytest.raises(PolicyDenied):
        hub.services.data_access.read_readings(OPERATOR, "marketing", device_id="w1")


def test_withdrawn_consent_hides_readings_at_once(hub: HubParts) -> None:
    _fleet(hub)
    hub.services.consent.change("alice", "research", False, actor="alice")
    page = hub.services.data_access.read_readings(OPERATOR, "research")
    assert {i["device_id"] for i in page["items"]} == {"w2"}


def test_every_data_access_is_audit_logged(hub: HubParts) -> None:
    _fleet(hub)
    hub.client.get("/v1/telemetry", params={"purpose": "research"}, headers=hub.operator_token("operator"))
    hub.client.get("/v1/telemetry", params={"purpose": "research"}, headers=hub.operator_token("viewer"))
    hub.services.data_access.readings_for_export(Reader("pia", "privacy-officer", "cli"), "research")
    hub.deliver()
    log = hub.services.audit.log
    accesses = [cbor2.loads(e) for e in log.entries(0, log.size()) if DATA_ACCESSED.encode() in e]
    assert len(accesses) == 3 and sum(b"refused" in repr(a).encode() for a in accesses) == 1
    assert all(b"52.52" not in repr(a).encode() for a in accesses)  # counts, never bodies


def test_export_refuses_a_role_cedar_does_not_allow(hub: HubParts) -> None:
    _fleet(hub)
    with pytest.raises(PolicyDenied):
        hub.services.data_access.readings_for_export(Reader("vera", "viewer", "cli"), "research")
    rows = hub.services.data_access.readings_for_export(Reader("pia", "privacy-officer", "cli"), "research")
    assert {r.device_id for r in rows} == {"w1", "w2"}


def test_an_erasure_in_one_hub_process_holds_in_another(hub: HubParts, tmp_path: Path) -> None:
    """Two hub processes on one database and key store: keys cached by the second process must not
    keep the erased subject readable there, nor be used to seal the device's next readings."""
    _fleet(hub)
    url = hub.store.engine.url.render_as_string(hide_password=False)
    other = make_hub(tmp_path, url)  # a second process: its own caches, its own key-store instance
    try:
        privacy_b = other.services.consent.privacy
        export = privacy_b.seal_for_subject("alice", b"alice export", other.services.clock.now())
        alice_key = privacy_b.subject_keyring().existing_key(subject_owner("alice"))
        assert alice_key is not None
        assert {i["device_id"] for i in other.services.data_access.read_readings(OPERATOR, "research")["items"]} \
            == {"w1", "w2"}  # the second process has alice's key cached now
        hub.services.consent.erase("alice", actor="dpo")
        with pytest.raises(KeyStoreError):
            privacy_b.open_for_subject("alice", export)
        _store(other, "w1", 3, _body("research", 90, ALICE_LOCATION))  # the device keeps sending
        with other.store.engine.connect() as c:
            key_id = c.execute(select(readings.c.key_id).where(readings.c.seq == 3)).scalar_one()
        assert key_id != alice_key.key_id
        assert {i["device_id"] for i in other.services.data_access.read_readings(OPERATOR, "research")["items"]} \
            == {"w2"}  # w1 has no subject and no consent now
    finally:
        other.store.engine.dispose()


def test_receipts_are_sealed_and_unreadable_in_a_copy_after_erasure(hub: HubParts, tmp_path: Path) -> None:
    from iotguard.hub.stores.data_keys import SEALED_DOCUMENT_MAGIC
    from iotguard.hub.stores.receipts import receipts
    from tests.hub.test_stores import _receipt

    receipt, public_key, contract = _receipt(tmp_path)  # device d1, thermo-1
    hub.registry.add_device("d1", "thermo-1")
    hub.services.consent.link("dora", "d1")
    privacy = hub.services.consent.privacy
    privacy.store_receipt("d1", receipt, public_key, hub.services.clock.now(), contract=contract)
    with hub.store.engine.connect() as c:
        stored = bytes(c.execute(select(receipts.c.body)).scalar_one())
    assert stored.startswith(SEALED_DOCUMENT_MAGIC) and b"thermo-1" not in stored
    assert [r.encode() for r in privacy.receipts_of("d1")] == [receipt]  # opened, still verifiable
    with hub.store.engine.begin() as c:  # as stored before ADR 0405: the maintenance tick seals it in place
        c.execute(receipts.update().values(body=cbor2.loads(receipt)[0]))
    assert hub.services.consent.seal_clear_readings() == 1 and privacy.seal_clear_receipts(
        hub.services.clock.now()) == 0
    with hub.store.engine.connect() as c:
        assert bytes(c.execute(select(receipts.c.body)).scalar_one()).startswith(SEALED_DOCUMENT_MAGIC)
    assert [r.encode() for r in privacy.receipts_of("d1")] == [receipt]
    backup = _dump(hub.store.engine)
    assert hub.services.consent.erase("dora", actor="dpo").receipts_deleted == 1
    restored = _restore(backup, hub, tmp_path)
    try:
        assert PrivacyStore(restored, keystore=hub.services.keystore).receipts_of("d1") == []
    finally:
        restored.dispose()


def test_a_batch_of_new_owners_gets_its_data_keys_in_one_key_store_write(hub: HubParts,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    keystore = hub.services.keystore
    calls: list[int] = []
    real = keystore.generate_many  # type: ignore[attr-defined]
    monkeypatch.setattr(keystore, "generate_many", lambda labels, kind: (calls.append(len(labels)),
                                                                        real(labels, kind))[1])
    now = hub.services.clock.now()
    rows = [{"device_id": f"fresh-{i}", "epoch": 1, "seq": 1, "topic": f"t/fresh-{i}", "received_at": now,
             "body": _body("research", 60 + i, "0,0")} for i in range(20)]
    hub.store.store_batch(rows, [], {}, now=now)
    assert calls == [20]
    with hub.store.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(data_keys)).scalar() == 20
        stored = c.execute(select(readings.c.device_id, readings.c.body, readings.c.key_id)).all()
    assert len(stored) == 20 and all(b"research" not in bytes(body) for _d, body, _k in stored)
