"""Credential lifecycle through the hub: automatic renewal, re-provisioning, revocation lists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from iotguard.agent import Agent
from iotguard.clock import FixedClock
from iotguard.config import AgentConfig
from iotguard.errors import EnrollmentError
from iotguard.hub.mosquitto import revoked_serials
from tests.hub.conftest import HubParts


def test_certificate_is_renewed_automatically_before_expiry(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    first = hub.store.get_device("dev-1")
    assert a.maybe_renew() is False  # plenty of validity left
    clock = FixedClock(datetime.now(UTC))
    a.clock = clock
    clock.advance(timedelta(days=hub.cfg.cert_validity_days * 0.8).total_seconds())
    hub.registry.clock = FixedClock(clock.now())  # the hub's clock agrees with the device's
    hub.core.app.state.device_plane.clock = hub.registry.clock
    assert a.maybe_renew() is True
    renewed = hub.store.get_device("dev-1")
    assert renewed.cert_serial != first.cert_serial
    assert renewed.cert_not_after is not None and first.cert_not_after is not None
    assert renewed.cert_not_after > first.cert_not_after
    cert = x509.load_pem_x509_certificate((a.dir / "device.pem").read_bytes())
    assert format(cert.serial_number, "x") == renewed.cert_serial
    assert hub.core.posture.require("dev-1").cert_not_after == renewed.cert_not_after


def test_renewal_needs_the_identity_key(hub: HubParts) -> None:
    """Another device cannot renew a certificate in this device's name."""
    hub.agent("dev-1")
    intruder = hub.agent("dev-2")
    intruder.device_id = "dev-1"  # claims dev-1, signs with dev-2's key
    with pytest.raises(EnrollmentError):
        intruder.renew_certificate()


def test_reprovisioning_erases_keys_and_keeps_the_old_certificate_revoked(hub: HubParts) -> None:
    a = hub.agent("dev-1")
    old_serial = hub.store.get_device("dev-1").cert_serial
    code = hub.registry.reprovision("dev-1", actor="test")
    d = hub.store.get_device("dev-1")
    assert d.status == "pending" and d.identity_public_key is None and d.current_epoch is None
    assert int(old_serial or "0", 16) in {s for s, _ in revoked_serials(hub.store)}
    # the old session no longer opens anything
    from iotguard.hub.ingest import Incoming
    from iotguard.wire import Reading, encode_reading

    _s, env = a.sealer.seal(encode_reading(Reading(1, {"temperature": 1.0}, "heating_control")))
    assert hub.processor.process([Incoming(a.sealer.topic, env)]).stored == 0
    # a device with fresh keys enrolls with the new code
    fresh = Agent(AgentConfig(data_dir=str(hub.tmp / "fresh"), hub_url="http://testserver",
                              suites=["chacha20-poly1305"]), "dev-1", http=hub.client)
    fresh.enroll(str(code))
    assert hub.store.get_device("dev-1").status == "active"


def test_decommissioned_device_cannot_be_reprovisioned(hub: HubParts) -> None:
    hub.agent("dev-1")
    hub.registry.decommission("dev-1")
    with pytest.raises(EnrollmentError):
        hub.registry.reprovision("dev-1")


def test_tamper_event_zeroizes_the_device_and_the_hub_stops_trusting_it(hub: HubParts) -> None:
    """Enclosure opened: the device reports (signed), zeroizes, and even a copied session key is useless."""
    from iotguard.errors import TamperError
    from iotguard.hub.ingest import Incoming
    from iotguard.wire import Reading, encode_reading

    a = hub.agent("dev-1")
    _s, stolen = a.sealer.seal(encode_reading(Reading(1, {"temperature": 1.0}, "heating_control")))
    topic = a.sealer.topic
    assert a.respond_to_tamper("enclosure opened") is True
    with pytest.raises(TamperError):
        a.keystore.sign("identity", b"x")
    assert hub.core.posture.require("dev-1").trust_tier == "failed"
    out = hub.processor.process([Incoming(topic, stolen)])
    assert out.stored == 0 and out.rejected["policy_denied"] == 1
    from iotguard.audit.events import AuditEvent

    assert "device.tampered" in [AuditEvent.from_cbor(e).type for e in hub.core.audit.entries(0, hub.core.audit.size())]


def test_forged_tamper_report_is_refused(hub: HubParts) -> None:
    """Nobody but the device can mark it tampered (that would be a denial of service)."""
    hub.agent("dev-1")
    intruder = hub.agent("dev-2")
    intruder.device_id = "dev-1"  # claims dev-1, signs with dev-2's key
    r = hub.client.post("/v1/tamper", json=intruder._signed("tamper_report", {"reason": "x"})[0])
    assert (r.status_code, r.json()["error"]) == (401, "forged")
    r = hub.client.post("/v1/tamper", json={"device_id": "dev-1", "reason": "x", "ts": 1, "signature": "AA"})
    assert (r.status_code, r.json()["error"]) == (401, "unauthenticated")
    assert hub.core.posture.require("dev-1").trust_tier != "failed"
