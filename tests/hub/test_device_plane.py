"""Attacks on the device plane: every device request is verified once and decided by Cedar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from iotguard.agent import Agent
from iotguard.audit import EventType
from iotguard.clock import FixedClock
from iotguard.errors import EnrollmentError
from iotguard.hub.credentials import ensure_bootstrap
from iotguard.hub.ingest import Incoming
from iotguard.hub.schema import devices, enrollment_tokens, key_epochs
from iotguard.policy import PolicySet, default_policy_set
from iotguard.wire import Reading, encode_reading
from tests.hub.conftest import HubParts


def _transport_pk() -> bytes:
    """A fresh transport public key (renewals carry one, ADR 0600)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().public_key().public_bytes_raw()


def _quarantine(hub: HubParts, device_id: str = "dev-1") -> None:
    r = hub.client.post(f"/v1/devices/{device_id}/quarantine", json={"reason": "scan"},
                        headers=hub.operator_token("operator"))
    assert r.status_code == 200, r.text


def _refusal(agent: Agent, call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(EnrollmentError) as exc:
        call()
    return str(exc.value).rsplit(" ", 2)[-2] + " " + str(exc.value).rsplit(" ", 1)[-1]


def _epochs(hub: HubParts, device_id: str = "dev-1") -> list[int]:
    with hub.store.engine.connect() as c:
        return [r.epoch for r in c.execute(select(key_epochs.c.epoch).where(key_epochs.c.device_id == device_id))]


def _forbid(hub: HubParts, action: str) -> None:
    rule = f'\n@id("test-forbid")\nforbid (principal, action == Action::"{action}", resource);\n'
    hub.services.posture.engine.load(PolicySet(default_policy_set().text + rule))


def test_quarantined_device_cannot_rekey(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    _quarantine(hub)
    assert _refusal(a, a.rekey) == "403 policy_denied"
    assert _epochs(hub) == [1] and a.sealer.epoch == 1


def test_quarantined_device_cannot_renew(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    serial = hub.store.get_device("dev-1").cert_serial
    _quarantine(hub)
    assert _refusal(a, a.renew_certificate) == "403 policy_denied"
    assert hub.store.get_device("dev-1").cert_serial == serial


def test_quarantined_device_cannot_publish(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    _s, env = a.sealer.seal(encode_reading(Reading(1_700_000_000_000, {"temperature": 21.0}, "heating_control")))
    _quarantine(hub)
    stats = hub.processor.process([Incoming(a.sealer.topic, env)])
    assert stats.stored == 0 and stats.rejected["policy_denied"] == 1


def test_quarantined_device_can_still_report_tampering(hub: HubParts) -> None:
    """A tamper report from an authentic device is never refused for its posture."""
    a = hub.agent("dev-1")
    _quarantine(hub)
    assert a.respond_to_tamper("enclosure opened") is True
    assert hub.services.posture.posture.require("dev-1").trust_tier == "failed"


def test_failed_tier_device_cannot_rekey_or_renew(hub: HubParts) -> None:
    from iotguard.hub.policy_store import save_posture

    a = hub.agent("dev-1")
    failed = hub.services.posture.posture.update("dev-1", trust_tier="failed")
    save_posture(hub.store.engine, [failed], now=hub.services.clock.now())  # stored, as every tier change is
    assert _refusal(a, a.rekey) == "403 policy_denied"
    assert _refusal(a, a.renew_certificate) == "403 policy_denied"


def test_revoked_device_refused(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    hub.registry.revoke("dev-1")
    assert _refusal(a, a.renew_certificate) == "403 revoked"
    assert _refusal(a, a.rekey) == "403 revoked"


def test_expired_certificate_cannot_renew(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    expired = datetime.now(UTC) - timedelta(minutes=1)
    with hub.store.engine.begin() as c:
        c.execute(update(devices).where(devices.c.device_id == "dev-1").values(cert_not_after=expired))
    hub.services.posture.sync("dev-1")
    assert _refusal(a, a.renew_certificate) == "403 expired"
    assert hub.store.get_device("dev-1").cert_not_after == expired


def test_stale_signed_request_refused(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    a.clock = FixedClock(datetime.now(UTC) - timedelta(minutes=10))
    assert _refusal(a, a.renew_certificate) == "409 stale"
    a.clock = FixedClock(datetime.now(UTC) + timedelta(minutes=10))
    assert _refusal(a, a.renew_certificate) == "409 stale"


def test_replayed_signed_request_refused(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    wire = a._signed("renew", {"transport_public_key": _transport_pk()})[0]
    assert hub.client.post("/v1/renew", json=wire).status_code == 200
    r = hub.client.post("/v1/renew", json=wire)
    assert (r.status_code, r.json()["error"]) == (409, "replay")


def test_replay_to_another_hub_process_refused(hub: HubParts) -> None:
    """Nonces live in the database: a request captured at hub A is refused by hub B."""
    from iotguard.hub.api import create_app
    from iotguard.hub.compose import build_hub_services

    a = hub.agent("dev-1")
    other = TestClient(create_app(build_hub_services(hub.cfg)))
    wire = a._signed("tamper_report", {"reason": "probe"})[0]
    assert hub.client.post("/v1/tamper", json=wire).status_code == 200
    r = other.post("/v1/tamper", json=wire)
    assert (r.status_code, r.json()["error"]) == (409, "replay")


def test_request_signed_by_another_device_is_forged(hub: HubParts) -> None:
    hub.agent("dev-1")
    intruder = hub.agent("dev-2")
    intruder.device_id = "dev-1"  # claims dev-1, signs with dev-2's key
    r = hub.client.post("/v1/renew", json=intruder._signed("renew", {"transport_public_key": _transport_pk()})[0])
    assert (r.status_code, r.json()["error"]) == (401, "forged")


def test_forgeries_in_a_devices_name_do_not_lock_the_device_out(hub: HubParts) -> None:
    """Check for lockout as denial of service: forged requests lock out the forger's address
    and make every further forgery fail, but the real device still gets through."""
    a = hub.agent("dev-1")
    intruder = hub.agent("dev-2")
    intruder.device_id = "dev-1"
    def forged() -> dict[str, str]:
        return intruder._signed("renew", {"transport_public_key": _transport_pk()})[0]

    statuses = [hub.client.post("/v1/renew", json=forged()).status_code for _ in range(12)]
    assert statuses[0] == 401 and statuses[-1] == 429
    a.renew_certificate()
    assert hub.client.post("/v1/renew", json=forged()).status_code == 429


def test_enrollment_asks_the_policy_engine(hub: HubParts) -> None:
    code = str(hub.registry.add_device("dev-1", "thermo-1"))
    _forbid(hub, "complete_enrollment")
    agent = hub.agent("dev-1", enroll=False)
    assert _refusal(agent, lambda: agent.enroll(code)) == "403 policy_denied"
    assert hub.store.get_device("dev-1").status == "pending"
    with hub.store.engine.connect() as c:
        assert c.execute(select(enrollment_tokens.c.used_at)).scalar_one() is None  # the code is not burnt
    hub.services.posture.engine.load(default_policy_set())
    agent.enroll(code)
    assert hub.store.get_device("dev-1").status == "active"


def test_bootstrap_asks_the_policy_engine(hub: HubParts) -> None:
    secret = ensure_bootstrap(hub.store, datetime.now(UTC))
    _forbid(hub, "bootstrap")
    r = hub.client.post("/v1/bootstrap", json={"bootstrap_token": secret, "name": "first-admin"})
    assert (r.status_code, r.json()["error"]) == (403, "policy_denied")
    hub.services.posture.engine.load(default_policy_set())
    r = hub.client.post("/v1/bootstrap", json={"bootstrap_token": secret, "name": "first-admin"})
    assert r.status_code == 200


def test_refusals_are_audited_with_action_and_reason(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    a.clock = FixedClock(datetime.now(UTC) - timedelta(minutes=10))
    hub.client.post("/v1/renew", json=a._signed("renew", {"transport_public_key": _transport_pk()})[0])
    a.clock = FixedClock(datetime.now(UTC))
    _quarantine(hub)
    hub.client.post("/v1/rekey", json=a._signed("rekey", {"epoch": 2, "kex_public_key": b"k" * 32,
                                                          "suites": ["chacha20-poly1305"]})[0])
    from iotguard.audit.events import AuditEvent

    log = hub.services.audit.log
    events = [AuditEvent.from_cbor(e) for e in log.entries(0, log.size())]
    failures = [(e.details.get("what"), e.details.get("reason")) for e in events if e.type == EventType.AUTH_FAILED]
    assert ("renew", "stale") in failures and ("rekey", "policy_denied") in failures


def test_enrollment_guessing_behind_a_gateway_does_not_block_real_enrollments(hub: HubParts) -> None:
    """Check for default-credential guessing from a shared address: the guesser locks out, the
    devices enrolling through the same gateway with real codes do not."""
    from iotguard.identity import b64e, parse_enrollment_code

    real = parse_enrollment_code(str(hub.registry.add_device("dev-1", "thermo-1")))
    statuses = []
    for i in range(12):
        guess = b64e(bytes([i]) * 32)
        forged = f"iotguard-enroll:v1:dev-1:{guess}:{real.ca_fingerprint}"
        try:
            hub.agent("dev-1", enroll=False).enroll(forged)
        except EnrollmentError as exc:
            statuses.append(str(exc).split("HTTP ")[1])
    assert statuses[0] == "403 enrollment_failed" and statuses[-1] == "429 locked_out"
    hub.agent("dev-2")  # a real code through the same (locked-out) address
    assert hub.store.get_device("dev-2").status == "active"


def test_lockout_holds_across_hub_processes(hub: HubParts) -> None:
    """Check for lockout evasion: guesses spread over two hub processes sharing one database."""
    from iotguard.hub.api import create_app
    from iotguard.hub.compose import build_hub_services

    other = TestClient(create_app(build_hub_services(hub.cfg)))
    clients = [hub.client, other]
    for i in range(10):
        clients[i % 2].get("/v1/devices", headers={"Authorization": f"Bearer igt_g{i}_g{i}"})
    for client in clients:
        r = client.get("/v1/devices", headers={"Authorization": "Bearer igt_next_guess"})
        assert (r.status_code, r.json()["error"]) == (429, "locked_out")
        assert client.get("/v1/devices", headers=hub.operator_token("viewer")).status_code == 200
