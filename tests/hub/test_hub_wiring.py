"""The hub's enforcement points wired together: Cedar at ingest and API,
audit events from every component, data contracts at ingest, receipts,
bootstrap, lockout and decommissioning."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from iotguard.audit.merkle import leaf_hash, verify_inclusion
from iotguard.hub.credentials import ensure_bootstrap
from iotguard.hub.ingest import Incoming
from iotguard.hub.schema import key_epochs
from iotguard.wire import Reading, encode_reading
from tests.hub.conftest import HubParts


def _seal(agent, fields=None, purpose="heating_control"):  # type: ignore[no-untyped-def]
    reading = Reading(1_700_000_000_000, fields or {"temperature": 21.0}, purpose)
    _s, env = agent.sealer.seal(encode_reading(reading))
    return Incoming(agent.sealer.topic, env)


def _audit_types(hub: HubParts) -> list[str]:
    from iotguard.audit.events import AuditEvent

    log = hub.services.audit.log
    return [AuditEvent.from_cbor(e).type for e in log.entries(0, log.size())]


def test_quarantine_takes_effect_at_ingest_at_once(hub: HubParts) -> None:
    """Quarantine is a posture change: the very next envelope is refused, no cache serves the old allow."""
    a = hub.agent("dev-1")
    assert hub.processor.process([_seal(a)]).stored == 1  # an allow is now cached
    r = hub.client.post("/v1/devices/dev-1/quarantine", json={"reason": "scan"},
                        headers=hub.operator_token("operator"))
    assert r.status_code == 200
    out = hub.processor.process([_seal(a)])
    assert out.rejected["policy_denied"] == 1 and out.stored == 0
    assert "device.quarantined" in _audit_types(hub)


def test_release_needs_fresh_attestation(hub: HubParts) -> None:
    hub.agent("dev-1")
    admin = hub.operator_token("security-admin")
    hub.client.post("/v1/devices/dev-1/quarantine", headers=admin)
    r = hub.client.post("/v1/devices/dev-1/release", headers=admin)
    assert r.status_code == 403 and r.json()["error"] == "policy_denied"


def test_viewer_cannot_quarantine(hub: HubParts) -> None:
    hub.agent("dev-1")
    r = hub.client.post("/v1/devices/dev-1/quarantine", headers=hub.operator_token("viewer"))
    assert r.status_code == 403


def test_undeclared_field_is_rejected_by_the_hub(hub: HubParts) -> None:
    """Data minimisation at the hub: a field the contract does not declare for the purpose is refused."""
    a = hub.agent("dev-1")
    out = hub.processor.process([_seal(a, {"temperature": 21.0, "owner_name": "Alice"})])
    assert out.rejected["policy_denied"] == 1 and out.stored == 0
    out = hub.processor.process([_seal(a, {"temperature": 21.0}, purpose="marketing")])
    assert out.rejected["policy_denied"] == 1


def test_audit_log_records_enrollment_and_rejections_with_provenance(hub: HubParts) -> None:
    from iotguard.audit.provenance import provenance, verify_chain_of_custody

    a = hub.agent("dev-1")
    hub.processor.process([Incoming(a.sealer.topic, b"\x00garbage")])
    types = _audit_types(hub)
    for t in ("device.registered", "device.manufactured", "device.enrolled", "cert.issued",
              "envelopes.rejected", "policy.changed"):
        assert t in types, (t, types)
    chain = provenance(hub.services.audit.log, "dev-1")
    events = verify_chain_of_custody(chain, hub.services.audit.log.verifier)
    assert [e.type for e in events][:2] == ["device.registered", "device.manufactured"]


def test_audit_entries_prove_inclusion_via_the_api(hub: HubParts) -> None:
    hub.agent("dev-1")
    admin = hub.operator_token("security-admin")
    cp = hub.client.post("/audit/checkpoint", headers=admin)
    assert cp.status_code == 200
    assert hub.client.get("/audit/checkpoint", headers=hub.operator_token("viewer")).status_code == 403


def test_final_checkpoint_is_served_only_once_witnesses_made_it_final(hub: HubParts) -> None:
    admin = hub.operator_token("security-admin")
    missing = hub.client.get("/audit/checkpoint/final", headers=admin)
    assert missing.status_code == 404 and missing.json()["detail"]["code"] == "no_final_checkpoint"
    note = hub.client.post("/audit/checkpoint", headers=admin).text
    hub.services.audit.log.save_final_checkpoint(note)  # what CheckpointFinality does after the quorum
    assert hub.client.get("/audit/checkpoint/final", headers=admin).text == note
    assert hub.client.get("/audit/checkpoint/final", headers=hub.operator_token("viewer")).status_code == 403


def test_privacy_receipt_is_verified_and_stored(hub: HubParts) -> None:
    from iotguard.clock import SystemClock
    from iotguard.privacy import ConsentState

    a = hub.agent("dev-1")
    a.attach_privacy("thermo-1", ConsentState("alice").grant("research", SystemClock().now()))
    readings = a.privacy.process({"temperature": 21.5, "humidity": 40.0, "owner_name": "Alice"})  # type: ignore[union-attr]
    assert readings and all("owner_name" not in r.fields for r in readings)
    for r in readings:
        _s, env = a.sealer.seal(encode_reading(r))
        assert hub.processor.process([Incoming(a.sealer.topic, env)]).stored == 1
    receipt = a.privacy.seal_receipt(SystemClock().now())  # type: ignore[union-attr]
    r = hub.client.post("/v1/receipts", json=a._signed("upload_receipt", {"receipt": receipt})[0])
    assert r.status_code == 200, r.text
    tampered = receipt[:-1] + bytes((receipt[-1] ^ 1,))
    r = hub.client.post("/v1/receipts", json=a._signed("upload_receipt", {"receipt": tampered})[0])
    assert r.status_code in (400, 401), r.text


def test_receipt_with_bad_base64_is_malformed_not_a_server_error(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    wire = a._signed("upload_receipt", {"receipt": b"x"})[0]
    for bad in ("%%%not base64%%%", "A", "ü" * 10):
        r = hub.client.post("/v1/receipts", json={**wire, "request": bad})
        assert r.status_code == 400 and r.json()["error"] == "malformed", (bad, r.text)


def test_bootstrap_token_is_one_time(hub: HubParts) -> None:
    secret = ensure_bootstrap(hub.store, datetime.now(UTC))
    assert secret is not None
    r = hub.client.post("/v1/bootstrap", json={"bootstrap_token": secret, "name": "first-admin"})
    assert r.status_code == 200 and r.json()["role"] == "security-admin"
    token = r.json()["token"]
    assert hub.client.get("/v1/devices", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    again = hub.client.post("/v1/bootstrap", json={"bootstrap_token": secret, "name": "second"})
    assert again.status_code in (401, 403)
    assert ensure_bootstrap(hub.store, datetime.now(UTC)) is None  # never again once operators exist


def test_default_credential_guessing_locks_out(hub: HubParts) -> None:
    """Every guessed token fails, and repeated failures lock the client out (429)."""
    statuses = [hub.client.get("/v1/devices", headers={"Authorization": f"Bearer igt_{guess}_{guess}"}).status_code
                for guess in ("admin", "password", "iotguard", "changeme", "12345", "root", "default", "test",
                              "guest", "operator", "secret", "letmein")]
    assert set(statuses) <= {401, 429} and statuses[-1] == 429


def test_address_lockout_does_not_lock_out_valid_tokens_behind_the_same_nat(hub: HubParts) -> None:
    """Check for lockout as denial of service: a guesser behind a NAT cannot lock its neighbours out."""
    valid = hub.operator_token("viewer")
    for guess in range(15):
        hub.client.get("/v1/devices", headers={"Authorization": f"Bearer igt_{guess}_{guess}"})
    assert hub.client.get("/v1/devices", headers={"Authorization": "Bearer igt_x_y"}).status_code == 429
    assert hub.client.get("/v1/devices", headers=valid).status_code == 200
    assert hub.client.get("/v1/devices", headers={"Authorization": "Bearer igt_z_z"}).status_code == 429


def test_decommission_crypto_erases_session_keys(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    r = hub.client.post("/v1/devices/dev-1/decommission", headers=hub.operator_token("security-admin"))
    assert r.status_code == 200, r.text
    with hub.store.engine.connect() as c:
        assert c.execute(select(key_epochs).where(key_epochs.c.device_id == "dev-1")).first() is None
    assert hub.processor.process([_seal(a)]).stored == 0
    assert hub.store.get_device("dev-1").status == "decommissioned"


@pytest.mark.parametrize("role, status", [("viewer", 403), ("operator", 403), ("security-admin", 200)])
def test_only_security_admin_revokes(hub: HubParts, role: str, status: int) -> None:
    hub.agent("dev-1")
    assert hub.client.post("/v1/devices/dev-1/revoke", headers=hub.operator_token(role)).status_code == status


def test_inclusion_helpers_are_rfc9162(hub: HubParts) -> None:
    # A smoke check that the hub's log uses the audit package's RFC 9162 hashing.
    log = hub.services.audit.log
    hub.agent("dev-1")
    entries = log.entries(0, log.size())
    note = log.publish_checkpoint(datetime.now(UTC))
    assert note
    proof = log.inclusion_proof(0, log.size())
    verify_inclusion(leaf_hash(entries[0]), 0, log.size(), proof, log.root_hash(log.size()))


def test_quarantine_made_by_another_hub_process_reaches_this_one(hub: HubParts, tmp_path) -> None:
    """Two hubs share one database: a quarantine through hub A is enforced by hub B after one maintenance tick."""
    from iotguard.hub.compose import Maintenance, build_hub_services

    a = hub.agent("dev-1")
    other = build_hub_services(hub.cfg)  # hub B: its own process state, same database and keys
    maintenance = Maintenance(other)
    maintenance.tick()
    assert other.processor.process([_seal(a)]).stored == 1
    hub.client.post("/v1/devices/dev-1/quarantine", headers=hub.operator_token("operator"))
    maintenance.tick()
    assert other.posture.posture.require("dev-1").quarantined
    assert other.processor.process([_seal(a)]).rejected["policy_denied"] == 1


def test_device_enrolled_through_another_hub_process_is_not_denied_on_stale_posture(hub: HubParts) -> None:
    """Hub B started before the device enrolled at hub A. Without a maintenance tick B's memory
    has no posture for it; a denial is checked against the database before it stands, so B
    stores the reading instead of denying (and acknowledging, i.e. dropping) it."""
    from iotguard.hub.compose import build_hub_services

    other = build_hub_services(hub.cfg)  # hub B: its own process state, same database and keys
    a = hub.agent("dev-1")
    assert other.posture.posture.get("dev-1") is None
    out = other.processor.process([_seal(a)])
    assert out.stored == 1 and not out.rejected
    # ... and the device plane at hub B decides on the fresh posture too.
    other.plane.authorize("dev-1", "renew", now=other.clock.now())


def test_stale_posture_reread_is_rate_limited_and_a_real_denial_stands(hub: HubParts, monkeypatch) -> None:
    """A quarantined device's flood is still denied, and re-reads the database at most twice a second."""
    import iotguard.hub.services.posture as posture_module
    from iotguard.hub.compose import build_hub_services

    a = hub.agent("dev-1")
    hub.client.post("/v1/devices/dev-1/quarantine", headers=hub.operator_token("operator"))
    other = build_hub_services(hub.cfg)
    reads: list[str] = []
    original = posture_module.load_device_posture

    def counted(engine, device_id):  # type: ignore[no-untyped-def]
        reads.append(device_id)
        return original(engine, device_id)

    monkeypatch.setattr(posture_module, "load_device_posture", counted)
    out = other.processor.process([_seal(a, {"temperature": 20.0 + i}) for i in range(50)])
    assert out.stored == 0 and out.rejected["policy_denied"] == 50
    assert reads == ["dev-1"]  # one database read for the whole flood (rate-limited)
    assert other.posture.posture.require("dev-1").quarantined
