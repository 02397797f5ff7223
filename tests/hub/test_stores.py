"""Store contracts (every backend of one interface passes one suite) and table ownership."""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iotguard.channel import ReplayWindow
from iotguard.clock import FixedClock
from iotguard.errors import (
    AuthenticationError,
    ConsentError,
    EnrollmentError,
    IntegrityError,
    KeyStoreError,
    MalformedError,
    ReplayError,
    RevokedError,
    RollbackError,
    UnknownDeviceError,
)
from iotguard.hub.db import make_engine
from iotguard.hub.migrations import MIGRATIONS, migrate
from iotguard.hub.outbox import OutboxMessage, OutboxStore, SqlOutboxStore
from iotguard.hub.stores.consent import ConsentStore, SqlConsentStore
from iotguard.hub.stores.consent_memory import MemoryConsentStore
from iotguard.hub.stores.devices import DeviceStore, SqlDeviceStore
from iotguard.hub.stores.devices_memory import MemoryDeviceStore
from iotguard.hub.stores.privacy_memory import MemoryReceiptStore, MemorySubjectStore
from iotguard.hub.stores.receipts import ReceiptStore, SqlReceiptStore
from iotguard.hub.stores.subjects import SqlSubjectStore, SubjectStore
from iotguard.hub.stores.telemetry import MemoryTelemetryStore, SqlTelemetryStore, TelemetryStore, WindowWrite
from iotguard.hub.stores.tokens import MemoryOperatorTokenStore, OperatorTokenStore, SqlOperatorTokenStore
from iotguard.keys import SoftwareKeyStore
from iotguard.privacy import (
    ConsentState,
    DataContract,
    InMemoryLedgerStore,
    PrivacyLossLedger,
    PrivacyPipeline,
    PseudonymKeyring,
    ReceiptBuilder,
    load_contract,
)
from iotguard.privacy.receipt import RECEIPT_SIGNING_LABEL

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SRC = Path(__file__).resolve().parents[2] / "src" / "iotguard"


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def telemetry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TelemetryStore]:
    if request.param == "memory":
        yield MemoryTelemetryStore()
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield SqlTelemetryStore(engine)
    engine.dispose()


def _row(device: str, seq: int, epoch: int = 1) -> dict[str, object]:
    return {"device_id": device, "epoch": epoch, "seq": seq, "topic": f"iotguard/s/{device}/telemetry",
            "received_at": T0, "body": b"\xa1ap" + bytes([seq % 256])}


# -- telemetry contract ------------------------------------------------------


def _window(device: str, seqs: list[int], version: int | None = None, size: int = 8) -> WindowWrite:
    window = ReplayWindow(size)
    for seq in seqs:
        window.accept(seq)
    return WindowWrite(device, 1, window, version)


def test_replay_windows_are_saved_compare_and_swap_and_merged(telemetry: TelemetryStore) -> None:
    """Two hub processes save one device's window from stale copies: the second does not overwrite
    the first (last writer wins would forget what hub A accepted); the saved window is the union."""
    a = _window("d1", [1, 2])
    telemetry.store_batch([], [a], {}, now=T0)
    assert a.version == 1
    b = _window("d1", [3], version=None)  # hub B never saw A's row
    telemetry.store_batch([], [b], {}, now=T0)
    top, bitmap, version = telemetry.replay_window("d1", 1) or (0, b"", 0)
    assert version == 2 and b.version == 2
    saved = ReplayWindow(8, top, bitmap)
    for seq in (1, 2, 3):
        with pytest.raises(ReplayError):
            saved.check(seq)
    a.window.accept(4)  # hub A goes on from its version 1, now stale
    telemetry.store_batch([], [a], {}, now=T0)
    assert a.version == 3
    for seq in (1, 2, 3, 4):
        with pytest.raises(ReplayError):
            a.window.check(seq)  # hub A's own window learnt hub B's sequence too
    assert telemetry.replay_window("d1", 1) == (a.window.top, a.window.bitmap(), 3)


def test_new_windows_saved_together_merge_one_another_process_saved_first(telemetry: TelemetryStore) -> None:
    """A batch's first-seen devices are saved in one statement; if another hub saved one of them
    meanwhile, nothing it accepted is forgotten and every window's version is the stored one."""
    telemetry.store_batch([], [_window("d2", [5])], {}, now=T0)  # hub B got there first
    fresh = [_window("d1", [1]), _window("d2", [1]), _window("d3", [2])]
    telemetry.store_batch([], fresh, {}, now=T0)
    assert telemetry.replay_windows([("d1", 1), ("d2", 1), ("d3", 1), ("d9", 1)]).keys() == {
        ("d1", 1), ("d2", 1), ("d3", 1)}
    for w in fresh:
        assert telemetry.replay_window(w.device_id, 1) == (w.window.top, w.window.bitmap(), w.version)
    d2 = ReplayWindow(8, *telemetry.replay_window("d2", 1)[:2])  # type: ignore[misc]
    for seq in (1, 5):
        with pytest.raises(ReplayError):
            d2.check(seq)


def test_batch_stores_readings_windows_and_rejections(telemetry: TelemetryStore) -> None:
    inserted = telemetry.store_batch([_row("d1", 1), _row("d1", 2)], [_window("d1", [1, 2])],
                                     {("d1", "forged"): 2}, now=T0)
    assert inserted == {("d1", 1, 1), ("d1", 1, 2)}
    assert telemetry.reading_count() == 2 and telemetry.reading_count("d1") == 2
    assert telemetry.replay_window("d1", 1) == (2, b"\x03", 1)
    assert telemetry.rejection_totals() == {"forged": 2}


def test_a_reading_stored_twice_is_reported_as_not_inserted(telemetry: TelemetryStore) -> None:
    """Two hubs storing the same (device, epoch, seq): only one insert counts; the other is a replay."""
    telemetry.store_batch([_row("d1", 1)], [], {}, now=T0)
    inserted = telemetry.store_batch([_row("d1", 1), _row("d1", 2)], [], {}, now=T0)
    assert inserted == {("d1", 1, 2)}
    assert telemetry.reading_count("d1") == 2


def test_readings_after_pages_in_id_order(telemetry: TelemetryStore) -> None:
    telemetry.store_batch([_row("d1", i) for i in range(1, 6)] + [_row("d2", 1)], [], {}, now=T0)
    first = telemetry.readings_after(0, limit=3)
    assert [r.seq for r in first] == [1, 2, 3]
    rest = telemetry.readings_after(first[-1].id, device_id="d1")
    assert [r.seq for r in rest] == [4, 5]
    assert telemetry.last_reading_id() == max(r.id for r in telemetry.readings_after(0))
    assert all(r.received_at == T0 for r in rest)


def test_rejections_accumulate(telemetry: TelemetryStore) -> None:
    telemetry.count_rejections({("d1", "replay"): 1}, now=T0)
    telemetry.count_rejections({("d1", "replay"): 2, ("", "malformed"): 1}, now=T0 + timedelta(seconds=1))
    assert telemetry.rejection_totals() == {"replay": 3, "malformed": 1}


def test_erasure_and_retention_deletions(telemetry: TelemetryStore) -> None:
    telemetry.store_batch([_row("d1", 1), _row("d2", 1)], [], {}, now=T0)
    telemetry.store_batch([_row("d1", 2)], [], {}, now=T0 + timedelta(days=2))
    assert [r.seq for r in telemetry.readings_of(["d1"])] == [1, 2]
    old = telemetry.readings_received_before(T0 + timedelta(days=1))
    assert {(r.device_id, r.seq) for r in old} == {("d1", 1), ("d2", 1)}
    assert telemetry.delete_readings([r.id for r in old if r.device_id == "d2"]) == 1
    assert telemetry.delete_readings_of(["d1"]) == 2
    assert telemetry.reading_count() == 0


# -- ownership ---------------------------------------------------------------

#: Each table and the one module that may write it.
OWNERS = {
    "devices": "hub/stores/devices.py",
    "enrollment_tokens": "hub/stores/devices.py",
    "key_epochs": "hub/stores/devices.py",
    "revoked_certificates": "hub/stores/devices.py",
    "hub_meta": "hub/stores/devices.py",
    "readings": "hub/stores/telemetry.py",
    "rejections": "hub/stores/telemetry.py",
    "replay_windows": "hub/stores/telemetry.py",
    "api_tokens": "hub/stores/tokens.py",
    "outbox": "hub/outbox.py",
    "consent_events": "hub/stores/consent.py",
    "consent_pushes": "hub/stores/consent.py",
    "subject_devices": "hub/stores/consent.py",
    "receipts": "hub/stores/receipts.py",
    "budget_ledger": "hub/stores/receipts.py",
    "subject_keys": "hub/stores/subjects.py",
    "contributions": "hub/stores/subjects.py",
    "erasures": "hub/stores/subjects.py",
    "firmware_files": "hub/stores/firmware.py",
}


def test_no_module_writes_another_domains_tables() -> None:
    """Erasure asks the telemetry store to delete readings; decommissioning asks the device store; and so on."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        text = path.read_text()
        for table, owner in OWNERS.items():
            if rel == owner:
                continue
            pattern = rf"(?:\b(?:insert|update|delete)\(\s*{table}\b|\b{table}\.(?:insert|update|delete)\(\))"
            if re.search(pattern, text):
                offenders.append(f"{rel} writes {table}")
    assert offenders == []


def test_migrations_are_one_explicit_list_that_keeps_existing_ids() -> None:
    """Existing databases stay upgradable: the ids of ADR 0004 ranges are unchanged, in order."""
    ids = [m.id for m in MIGRATIONS]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for known in ("0001_core", "0002_revoked_certificates", "0100_audit_log", "0200_policy", "0300_privacy",
                  "0400_credentials"):
        assert known in ids
    for path in sorted((SRC / "hub").rglob("*.py")):
        assert "register(Migration" not in path.read_text(), path


# -- device registry contract ------------------------------------------------

@dataclass
class Registry:
    devices: DeviceStore
    telemetry: TelemetryStore
    outbox: OutboxStore
    tokens: OperatorTokenStore
    consent: ConsentStore


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "memory":
        devices = MemoryDeviceStore()
        yield Registry(devices, devices.telemetry, devices.outbox, MemoryOperatorTokenStore(),
                       MemoryConsentStore(devices.outbox))
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield Registry(SqlDeviceStore(engine), SqlTelemetryStore(engine), SqlOutboxStore(engine),
                   SqlOperatorTokenStore(engine), SqlConsentStore(engine))
    engine.dispose()


EFFECT = [OutboxMessage("audit.event", b"x")]
TOKEN = b"\x01" * 32


def _register(r: Registry, device_id: str = "d1", token: bytes = TOKEN) -> None:
    r.devices.create_device(device_id, "thermo-1", "plant1", serial="s1", now=T0, token_hash=token,
                            token_expires_at=T0 + timedelta(days=1), effects=EFFECT)


def _enroll(r: Registry, device_id: str = "d1", token: bytes = TOKEN, serial: str = "a1") -> None:
    r.devices.enroll(device_id, token, now=T0, identity_public_key=b"\x02" * 32, cert_pem="PEM", cert_serial=serial,
                     cert_not_after=T0 + timedelta(days=30), suite="chacha20-poly1305", wrapped_key=b"w1",
                     effects=EFFECT)


def test_register_then_enroll_with_effects_in_the_same_change(registry: Registry) -> None:
    _register(registry)
    assert registry.devices.get_device("d1").status == "pending"
    _enroll(registry)
    d = registry.devices.get_device("d1")
    assert (d.status, d.current_epoch, d.cert_serial, d.segment) == ("active", 1, "a1", "plant1")
    assert d.cert_not_after == T0 + timedelta(days=30) and d.created_at == T0
    assert registry.outbox.pending() == 2
    assert registry.devices.epoch_key("d1", 1) is not None
    assert registry.devices.device_models() == {"d1": "thermo-1"}
    assert [x.device_id for x in registry.devices.list_devices(status="active")] == ["d1"]


def test_device_id_cannot_be_registered_twice(registry: Registry) -> None:
    _register(registry)
    with pytest.raises(EnrollmentError):
        _register(registry, token=b"\x09" * 32)
    assert registry.outbox.pending() == 1  # the refused change wrote no effect


def test_enrollment_token_is_single_use_and_bound_to_its_device(registry: Registry) -> None:
    _register(registry)
    _register(registry, "d2", b"\x03" * 32)
    with pytest.raises(EnrollmentError):
        _enroll(registry, "d2", TOKEN)  # d1's token for d2
    _enroll(registry)
    with pytest.raises(EnrollmentError):
        _enroll(registry)  # replayed token


def test_rekey_must_be_the_next_epoch(registry: Registry) -> None:
    _register(registry)
    _enroll(registry)
    with pytest.raises(EnrollmentError):
        registry.devices.add_epoch("d1", 3, "ascon-aead128", b"w3", now=T0)
    registry.devices.add_epoch("d1", 2, "ascon-aead128", b"w2", now=T0, effects=EFFECT)
    assert registry.devices.get_device("d1").current_epoch == 2
    ek = registry.devices.epoch_key("d1", 2)
    assert ek is not None and ek.suite == "ascon-aead128"


def test_revoked_device_cannot_renew(registry: Registry) -> None:
    _register(registry)
    _enroll(registry)
    registry.devices.renew_certificate("d1", cert_pem="PEM2", cert_serial="b2",
                                       cert_not_after=T0 + timedelta(days=60), now=T0)
    assert registry.devices.get_device("d1").cert_serial == "b2"
    registry.devices.revoke_device("d1", now=T0, effects=EFFECT)
    assert registry.devices.get_device("d1").status == "revoked"
    with pytest.raises(RevokedError):
        registry.devices.renew_certificate("d1", cert_pem="PEM3", cert_serial="c3",
                                           cert_not_after=T0 + timedelta(days=90), now=T0)
    with pytest.raises(UnknownDeviceError):
        registry.devices.revoke_device("nope", now=T0)


def test_reprovision_keeps_the_old_serial_revoked_and_resets_replay_state(registry: Registry) -> None:
    _register(registry)
    _enroll(registry)
    registry.telemetry.store_batch([], [_window("d1", [1, 2, 3, 4, 5])], {}, now=T0)
    registry.devices.reprovision("d1", token_hash=b"\x04" * 32, token_expires_at=T0 + timedelta(days=1), now=T0)
    d = registry.devices.get_device("d1")
    assert (d.status, d.current_epoch, d.identity_public_key) == ("pending", None, None)
    assert "a1" in {s for s, _ in registry.devices.revoked_certificate_serials()}
    assert registry.devices.epoch_key("d1", 1) is None
    assert registry.telemetry.replay_window("d1", 1) is None  # epoch 1 of the new keys starts afresh
    _enroll(registry, token=b"\x04" * 32, serial="b2")
    assert registry.devices.get_device("d1").status == "active"


def test_decommission_erases_keys_burns_tokens_and_is_final(registry: Registry) -> None:
    _register(registry)
    _enroll(registry)
    registry.devices.add_epoch("d1", 2, "chacha20-poly1305", b"w2", now=T0)
    registry.devices.new_enrollment_token("d1", b"\x05" * 32, T0 + timedelta(days=1))
    result = registry.devices.decommission("d1", now=T0, effects=lambda epochs, serial: [
        OutboxMessage("audit.event", repr((epochs, serial)).encode())])
    assert result.erased_epochs == (1, 2) and result.cert_serial == "a1"
    assert registry.devices.get_device("d1").status == "decommissioned"
    assert registry.devices.epoch_key("d1", 2) is None
    with pytest.raises(EnrollmentError):
        registry.devices.reprovision("d1", token_hash=b"\x06" * 32, token_expires_at=T0 + timedelta(days=1),
                                     now=T0)
    assert registry.outbox.pending() == 3


def test_meta_is_set_once(registry: Registry) -> None:
    assert registry.devices.get_meta("fleet_ca_pem") is None
    assert registry.devices.set_meta_if_absent("fleet_ca_pem", "A") == "A"
    assert registry.devices.set_meta_if_absent("fleet_ca_pem", "B") == "A"


# -- operator token contract -------------------------------------------------


def test_operator_tokens(registry: Registry) -> None:
    tokens = registry.tokens
    secret = tokens.create_api_token("alice", "operator", now=T0)
    token = tokens.authenticate_api_token(secret)
    assert (token.name, token.role) == ("alice", "operator")
    with pytest.raises(AuthenticationError):
        tokens.authenticate_api_token(secret[:-1] + ("A" if secret[-1] != "A" else "B"))  # forged secret
    with pytest.raises(AuthenticationError):
        tokens.create_api_token("mallory", "root", now=T0)
    tokens.revoke_api_token(token.token_id, now=T0)
    with pytest.raises(AuthenticationError):
        tokens.authenticate_api_token(secret)
    assert [t["revoked"] for t in tokens.list_api_tokens()] == [True]


# -- consent contract --------------------------------------------------------


def test_consent_history_folds_into_the_current_state(registry: Registry) -> None:
    consent = registry.consent
    consent.link_device("alice", "d1", T0)
    consent.link_device("alice", "d2", T0)
    consent.link_device("bob", "d2", T0)  # a device has one owner
    assert consent.devices_of("alice") == ["d1"] and consent.subject_of("d2") == "bob"
    consent.set_consent("alice", "research", True, T0, actor="owner", effects=EFFECT)
    state = consent.set_consent("alice", "research", False, T0 + timedelta(hours=1), actor="dpo")
    assert state.version == 2 and not state.decisions["research"].granted
    assert consent.consent_state("alice") == state
    assert registry.outbox.pending() == 1
    with pytest.raises(RollbackError):  # an older decision cannot override a newer one
        consent.set_consent("alice", "research", True, T0, actor="replayer")


def test_consent_ack_must_match_what_was_pushed(registry: Registry) -> None:
    from iotguard.privacy import ConsentAck

    consent = registry.consent
    consent.link_device("alice", "d1", T0)
    consent.set_consent("alice", "research", True, T0, actor="owner")
    (cfg,) = consent.consent_configs("alice", T0)
    assert consent.unacknowledged_consent() == [("d1", 1)]
    assert consent.unacknowledged_consent(pushed_before=T0) == []
    with pytest.raises(ConsentError):  # a configuration the hub never pushed
        consent.record_consent_ack(ConsentAck("d1", 1, b"\x00" * 32, T0), T0)
    consent.record_consent_ack(ConsentAck("d1", 1, cfg.digest(), T0), T0 + timedelta(seconds=1))
    assert consent.unacknowledged_consent() == []


# -- receipts and subject records contracts ----------------------------------


@dataclass
class PrivacyRecords:
    receipts: ReceiptStore
    subjects: SubjectStore
    conn: Callable[[], Any]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def privacy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivacyRecords]:
    if request.param == "memory":
        yield PrivacyRecords(MemoryReceiptStore(), MemorySubjectStore(), contextlib.nullcontext)
        return
    url = f"sqlite:///{tmp_path / 'hub.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    subjects = SqlSubjectStore(engine)
    subjects._keystore = SoftwareKeyStore(tmp_path / "hub-keys", device_binding=b"stores-test-binding")
    yield PrivacyRecords(SqlReceiptStore(engine), subjects, engine.begin)
    engine.dispose()


def _receipt(tmp_path: Path) -> tuple[bytes, bytes, DataContract]:
    contract = load_contract("thermo-1")
    clock = FixedClock(T0)
    pipe = PrivacyPipeline(contract, ConsentState("alice").grant("research", T0),
                           PseudonymKeyring(bytes(range(32)), contract.pseudonym_rotation),
                           PrivacyLossLedger(InMemoryLedgerStore(), contract.budget_epsilon, contract.budget_period),
                           clock, device_id="d1", rng=random.Random(1))
    ks = SoftwareKeyStore(tmp_path / "device-keys", device_binding=b"stores-test-device")
    builder = ReceiptBuilder("d1", contract, pipe.config_sha256)
    builder.add(pipe.process({"temperature": 20.0, "humidity": 40.0}, "research").receipt_entry)
    return builder.seal(ks, T0).encode(), ks.public_key(RECEIPT_SIGNING_LABEL), contract


def test_receipts_are_verified_before_they_are_stored(privacy: PrivacyRecords, tmp_path: Path) -> None:
    receipt, pub, contract = _receipt(tmp_path)
    with pytest.raises(MalformedError):  # a receipt replayed under another device's name
        privacy.receipts.store_receipt("d2", receipt, pub, T0, contract=contract)
    with pytest.raises(IntegrityError):  # forged: one bit of the signature flipped
        privacy.receipts.store_receipt("d1", receipt[:-1] + bytes([receipt[-1] ^ 1]), pub, T0)
    claims = privacy.receipts.store_receipt("d1", receipt, pub, T0, contract=contract)
    assert [r.encode() for r in privacy.receipts.receipts_of("d1")] == [receipt]
    assert privacy.receipts.spent_units("d1", claims["period"]) > 0
    assert privacy.receipts.receipt_models() == ["thermo-1"]
    assert privacy.receipts.delete_receipts_before("thermo-1", T0 + timedelta(seconds=1)) == 1
    assert privacy.receipts.receipts_of("d1") == []


def test_a_resent_receipt_is_stored_once(privacy: PrivacyRecords, tmp_path: Path) -> None:
    # The agent retries a receipt whose answer it did not get (ADR 1502): the hub must not count it twice.
    receipt, pub, contract = _receipt(tmp_path)
    first = privacy.receipts.store_receipt("d1", receipt, pub, T0, contract=contract)
    again = privacy.receipts.store_receipt("d1", receipt, pub, T0 + timedelta(seconds=5), contract=contract)
    assert again == first
    assert [r.encode() for r in privacy.receipts.receipts_of("d1")] == [receipt]


def test_erasure_shreds_the_subject_key(privacy: PrivacyRecords) -> None:
    subjects = privacy.subjects
    sealed = subjects.seal_for_subject("alice", b"exported copy", T0)
    assert subjects.open_for_subject("alice", sealed) == b"exported copy"
    with pytest.raises(IntegrityError):
        subjects.open_for_subject("alice", sealed[:-1] + bytes([sealed[-1] ^ 1]))
    subjects.record_contribution("alice", "dp-query-1", "mean temperature", T0)
    with privacy.conn() as c:
        assert subjects.forget_subject_data(c, "alice") == (("aggregate:dp-query-1",), True)
        subjects.record_erasure(c, "alice", T0, "dpo", '{"readings_deleted": 3}')
    with pytest.raises(KeyStoreError):  # every copy sealed under the key is now unreadable
        subjects.open_for_subject("alice", sealed)
    assert subjects.erasures_of("alice") == [{"readings_deleted": 3}]


def test_routers_only_translate_http_to_service_calls() -> None:
    """No router reaches a database: no SQLAlchemy, no tables, no engine, no store of its own."""
    for path in sorted((SRC / "hub" / "routers").glob("*.py")):
        text = path.read_text()
        for forbidden in ("sqlalchemy", "hub.schema", "hub.db", ".engine", "hub.stores.", "Sql"):
            assert forbidden not in text, (path.name, forbidden)
