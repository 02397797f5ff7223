"""The device pipeline: minimisation, consent, budget, pseudonyms, generalisation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta

import pytest

from iotguard.clock import FixedClock
from iotguard.errors import BudgetExhausted, ConsentError, MalformedError, PolicyDenied, RollbackError
from iotguard.keys import SoftwareKeyStore
from iotguard.privacy import (
    ConsentAck,
    ConsentConfig,
    ConsentState,
    InMemoryLedgerStore,
    KeyStoreLedgerStore,
    PrivacyLossLedger,
    PrivacyPipeline,
    PseudonymKeyring,
    check_reading,
    geohash,
    keyring_from_keystore,
)
from tests.privacy.conftest import HOUR, ROOT

SENSOR = {
    "heart_rate": 72,
    "location": (52.520008, 13.404954),
    "wearer": "alice",
    "wifi_ssid": "alice-home",  # the sensor produces more than any purpose declares
    "battery": 0.8,
}
MakePipeline = Callable[..., PrivacyPipeline]


def test_undeclared_and_unconsented_fields_never_leave(make_pipeline: MakePipeline) -> None:
    """Check for over-collection: only declared fields of consented purposes come out."""
    pipe = make_pipeline("wear-1", "research")  # fitness (consent basis) not granted
    out = pipe.process_all(SENSOR)
    contract = pipe.contract
    assert {r.purpose for r in out.readings} == {"safety", "research"}
    assert out.refused == {"fitness": "no_consent"}
    allowed = contract.allowed_fields(["safety", "research"])
    for r in out.readings:
        assert set(r.fields) <= set(contract.purpose(r.purpose).fields) <= allowed
        assert "wifi_ssid" not in r.fields and "battery" not in r.fields and "wearer" not in r.fields
        assert "wifi_ssid" in r.receipt_entry.dropped
        check_reading(contract, r.purpose, r.fields)  # the hub accepts exactly this
    safety = next(r for r in out.readings if r.purpose == "safety")
    assert safety.fields["location"] == "52.520,13.404"
    research = next(r for r in out.readings if r.purpose == "research")
    assert research.fields["location"] == geohash(52.520008, 13.404954, 4)
    assert research.fields["heart_rate"] != 72  # privatised


def test_unconsented_purpose_raises_consent_error(make_pipeline: MakePipeline) -> None:
    pipe = make_pipeline("thermo-1")
    with pytest.raises(ConsentError):
        pipe.process({"temperature": 20.0}, "research")


def test_withdrawal_stops_collection_at_once(make_pipeline: MakePipeline, clock: FixedClock) -> None:
    pipe = make_pipeline("thermo-1", "research")
    pipe.process({"temperature": 20.0, "humidity": 40.0}, "research")
    clock.advance(HOUR)
    pipe.set_consent(pipe.consent.withdraw("research", clock.now()))
    with pytest.raises(ConsentError):
        pipe.process({"temperature": 20.0, "humidity": 40.0}, "research")
    # objection to a non-consent purpose also stops it
    pipe.set_consent(pipe.consent.withdraw("heating_control", clock.now()))
    assert pipe.process_all({"temperature": 20.0}).readings == ()


def test_budget_ledger_refuses_the_release_that_would_exceed_it(
    make_pipeline: MakePipeline, clock: FixedClock
) -> None:
    pipe = make_pipeline("thermo-1", "research", budget=5.0)  # 2.0 per reading
    for _ in range(2):
        pipe.process({"temperature": 20.0, "humidity": 40.0}, "research")
        clock.advance(HOUR)
    with pytest.raises(BudgetExhausted):
        pipe.process({"temperature": 20.0, "humidity": 40.0}, "research")
    # a release needing only 1.0 still fits (4.0 + 1.0 <= 5.0); nothing was charged for the refusal
    r = pipe.process({"temperature": 20.0}, "research")
    assert r.receipt_entry.period_total == pytest.approx(5.0)
    clock.advance(HOUR)
    with pytest.raises(BudgetExhausted):
        pipe.process({"temperature": 20.0}, "research")
    # deterministic purposes spend nothing and continue
    pipe.process({"temperature": 20.0}, "heating_control")
    clock.advance(86400)  # next budget period
    pipe.process({"temperature": 20.0, "humidity": 40.0}, "research")


def test_frequency_limit(make_pipeline: MakePipeline, clock: FixedClock) -> None:
    pipe = make_pipeline("thermo-1")
    pipe.process({"temperature": 20.0}, "heating_control")
    with pytest.raises(PolicyDenied, match="one reading per"):
        pipe.process({"temperature": 20.0}, "heating_control")
    clock.advance(10)
    pipe.process({"temperature": 20.0}, "heating_control")


def test_pseudonyms_do_not_link_across_purposes_or_periods() -> None:
    keys = PseudonymKeyring(ROOT, timedelta(days=7))
    from datetime import UTC, datetime

    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    a = keys.pseudonym("alice", "fitness", t0)
    assert a == keys.pseudonym("alice", "fitness", t0 + timedelta(hours=1))  # stable within a period
    assert a != keys.pseudonym("alice", "research", t0)
    assert a != keys.pseudonym("alice", "fitness", t0 + timedelta(days=7))
    # Over many subjects: no pseudonym recurs across purposes or periods, so a join links nobody.
    people = [f"person-{i}" for i in range(2000)]
    fit = {keys.pseudonym(p, "fitness", t0) for p in people}
    res = {keys.pseudonym(p, "research", t0) for p in people}
    nxt = {keys.pseudonym(p, "fitness", t0 + timedelta(days=8)) for p in people}
    assert len(fit) == len(people) and not fit & res and not fit & nxt
    # and another device (another root) gives unrelated pseudonyms
    other = PseudonymKeyring(hashlib.sha256(b"other").digest(), timedelta(days=7))
    assert other.pseudonym("alice", "fitness", t0) != a


def test_pipeline_pseudonymises_identifiers(make_pipeline: MakePipeline) -> None:
    pipe = make_pipeline("wear-1", "fitness")
    r = pipe.process(SENSOR, "fitness")
    assert r.fields["wearer"] != "alice" and len(str(r.fields["wearer"])) == 16
    assert r.receipt_entry.transforms["wearer"] == ("pseudonym",)


def test_time_resolution_and_generalisation(make_pipeline: MakePipeline, clock: FixedClock) -> None:
    clock.advance(3 * HOUR + 1234)
    pipe = make_pipeline("meter-1")
    r = pipe.process({"power": 3123.4}, "grid_planning")
    assert r.fields["power"] == 3250.0
    assert r.ts_ms % 3_600_000 == 0
    assert pipe.process({"power": 7000.0}, "billing").fields["power"] == 7000.0
    clock.advance(HOUR)
    assert pipe.process({"power": 9000.0}, "grid_planning").fields["power"] == 5000.0  # top-coded


def test_malformed_sensor_values_cost_nothing(make_pipeline: MakePipeline) -> None:
    pipe = make_pipeline("thermo-1", "research")
    with pytest.raises(MalformedError):
        pipe.process({"temperature": "warm"}, "research")
    with pytest.raises(MalformedError):
        pipe.process({"temperature": float("nan")}, "research")
    assert pipe._ledger.spent("dev-1", pipe._clock.now()) == 0.0


def test_categorical_and_bool_ldp(make_pipeline: MakePipeline) -> None:
    pipe = make_pipeline("motion-1", "research")
    r = pipe.process({"motion": True}, "research")
    assert isinstance(r.fields["motion"], bool)
    assert r.receipt_entry.transforms["motion"] == ("ldp:grr:1",)


def test_keystore_backed_keyring_and_ledger(tmp_path: object, clock: FixedClock) -> None:
    ks = SoftwareKeyStore(str(tmp_path))
    k1 = keyring_from_keystore(ks, timedelta(days=1))
    k2 = keyring_from_keystore(SoftwareKeyStore(str(tmp_path)), timedelta(days=1))
    assert k1.pseudonym("x", "p", clock.now()) == k2.pseudonym("x", "p", clock.now())
    ledger = PrivacyLossLedger(KeyStoreLedgerStore(ks), 1.5, timedelta(days=1))
    ledger.charge("d", 1.0, "research", clock.now())
    # a restarted device cannot get its budget back
    again = PrivacyLossLedger(KeyStoreLedgerStore(SoftwareKeyStore(str(tmp_path))), 1.5, timedelta(days=1))
    with pytest.raises(BudgetExhausted):
        again.charge("d", 1.0, "research", clock.now())


def test_consent_config_roundtrip_ack_and_rollback(make_pipeline: MakePipeline, clock: FixedClock) -> None:
    pipe = make_pipeline("thermo-1")
    hub_state = ConsentState("alice").grant("research", clock.now())
    assert hub_state.version == 1
    # The device starts from the same subject with version 0.
    cfg = ConsentConfig.decode(hub_state.to_config("dev-1", clock.now()).encode())
    ack = ConsentAck.decode(pipe.apply_consent_config(cfg).encode())
    ack.verify_for(cfg)
    pipe.process({"temperature": 20.0}, "research")
    clock.advance(HOUR)
    withdrawn = hub_state.withdraw("research", clock.now())
    pipe.apply_consent_config(withdrawn.to_config("dev-1", clock.now()))
    with pytest.raises(ConsentError):
        pipe.process({"temperature": 20.0}, "research")
    # Replaying the older "granted" configuration is refused: a replay cannot re-enable collection.
    with pytest.raises(RollbackError):
        pipe.apply_consent_config(cfg)
    with pytest.raises(MalformedError):
        pipe.apply_consent_config(withdrawn.grant("research", clock.now()).to_config("dev-2", clock.now()))
    with pytest.raises(ConsentError):
        ack.verify_for(withdrawn.to_config("dev-1", clock.now()))


def test_consent_message_decoding_is_strict() -> None:
    import cbor2

    with pytest.raises(MalformedError):
        ConsentConfig.decode(b"\xff")
    with pytest.raises(MalformedError):
        ConsentConfig.decode(cbor2.dumps({"v": 1, "type": "consent-config"}))
    with pytest.raises(MalformedError):
        ConsentConfig.decode(b"\x00" * 10_000)


def test_config_hash_differs_per_contract(make_pipeline: MakePipeline) -> None:
    a = make_pipeline("thermo-1").config_sha256
    b = make_pipeline("meter-1").config_sha256
    assert a != b and a == make_pipeline("thermo-1").config_sha256


def test_ledger_in_memory_accounting(clock: FixedClock) -> None:
    ledger = PrivacyLossLedger(InMemoryLedgerStore(), 1.0, timedelta(days=1))
    for _ in range(10):
        ledger.charge("d", 0.1, "p", clock.now())
    assert ledger.remaining("d", clock.now()) == pytest.approx(0.0)
    with pytest.raises(BudgetExhausted):
        ledger.charge("d", 0.01, "p", clock.now())


def test_first_consent_config_sets_the_subject(make_pipeline: MakePipeline, clock: FixedClock) -> None:
    pipe = make_pipeline("thermo-1")
    pipe.set_consent(ConsentState("unknown"))
    cfg = ConsentState("bob").grant("research", clock.now()).to_config("dev-1", clock.now())
    pipe.apply_consent_config(cfg)
    assert pipe.consent.subject_id == "bob"
    other = ConsentState("carol").grant("research", clock.now()).grant("research", clock.now())
    with pytest.raises(MalformedError, match="another data subject"):
        pipe.apply_consent_config(other.to_config("dev-1", clock.now()))
