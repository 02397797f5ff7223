"""REST API: authentication on every route but /health, roles, errors."""

from __future__ import annotations

import pytest

from tests.hub.conftest import HubParts


def test_api_docs_are_off_by_default(hub: HubParts) -> None:
    """The OpenAPI schema and its pages would answer anonymously: off unless an operator turns them on."""
    assert hub.client.get("/health").json()["status"] == "ok"
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert hub.client.get(path).status_code == 404, path


def test_api_docs_setting_turns_them_on(tmp_path) -> None:
    from tests.hub.conftest import make_hub

    parts = make_hub(tmp_path, api_docs=True)
    schema = parts.client.get("/openapi.json").json()
    assert "/v1/rekey" in schema["paths"]
    assert schema["paths"]["/v1/rekey"]["post"]["x-iotguard-device-action"] == "rekey"
    enroll = schema["paths"]["/v1/enroll"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"token", "signature", "identity_public_key"} <= set(enroll["properties"])
    assert parts.client.get("/docs").status_code == 200 and parts.client.get("/redoc").status_code == 200
    parts.store.engine.dispose()


def test_bad_and_revoked_tokens_are_refused(hub: HubParts) -> None:
    for bad in ("igt_x_y", "nonsense", "igt_" + "a" * 200):
        assert hub.client.get("/v1/devices", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    headers = hub.operator_token("viewer")
    assert hub.client.get("/v1/devices", headers=headers).status_code == 200
    token_id = headers["Authorization"].split("_")[1]
    from iotguard.clock import SystemClock

    hub.store.revoke_api_token(token_id, now=SystemClock().now())
    assert hub.client.get("/v1/devices", headers=headers).status_code == 401


def test_privilege_escalation_viewer_cannot_add_or_revoke(hub: HubParts) -> None:
    """Check for privilege escalation: a viewer token cannot call operator actions."""
    viewer = hub.operator_token("viewer")
    r = hub.client.post("/v1/devices", json={"device_id": "d1", "model": "thermo-1"}, headers=viewer)
    assert r.status_code == 403 and r.json()["error"] == "policy_denied"
    hub.agent("dev-1")
    assert hub.client.post("/v1/devices/dev-1/revoke", headers=viewer).status_code == 403
    assert hub.store.get_device("dev-1").status == "active"


def test_operator_adds_device_and_reads_telemetry(hub: HubParts) -> None:
    op = hub.operator_token("operator")
    r = hub.client.post("/v1/devices", json={"device_id": "dev-9", "model": "thermo-1"}, headers=op)
    assert r.status_code == 201
    code = r.json()["enrollment_code"]
    assert code.startswith("iotguard-enroll:v1:dev-9:")
    from iotguard.agent import Agent
    from iotguard.config import AgentConfig
    from iotguard.hub.ingest import Incoming
    from iotguard.wire import Reading, encode_reading

    agent = Agent(AgentConfig(data_dir=str(hub.tmp / "a"), suites=["chacha20-poly1305"]), "dev-9",
                  http=hub.client)
    agent.enroll(code)
    _s, env = agent.sealer.seal(encode_reading(Reading(123, {"temperature": 21.0}, "heating_control")))
    dpo = hub.operator_token("privacy-officer")
    assert hub.client.post("/v1/subjects/link", json={"subject_id": "owner-9", "device_id": "dev-9"},
                           headers=dpo).status_code == 200
    assert hub.client.post("/v1/consent", json={"subject_id": "owner-9", "purpose": "heating_control",
                                                "granted": True}, headers=dpo).status_code == 200
    hub.processor.process([Incoming(agent.sealer.topic, env)])
    items = hub.client.get("/v1/telemetry", params={"purpose": "heating_control"}, headers=op).json()["items"]
    assert items[0]["fields"] == {"temperature": 21.0} and items[0]["device_id"] == "dev-9"
    assert hub.client.get("/v1/devices/dev-9", headers=op).json()["readings"] == 1
    metrics = hub.client.get("/metrics", headers=op).text
    assert "iotguard_readings_stored_total 1.0" in metrics


def test_errors_do_not_leak_internals(hub: HubParts) -> None:
    op = hub.operator_token("operator")
    r = hub.client.get("/v1/devices/no-such-device", headers=op)
    assert r.status_code == 404
    assert r.json() == {"error": "unknown_device", "message": "unknown device"}


@pytest.mark.parametrize("body", [{}, {"device_id": "x" * 65, "model": "m"}, {"device_id": "a b", "model": "m"}])
def test_invalid_request_bodies_are_rejected(hub: HubParts, body: dict) -> None:
    r = hub.client.post("/v1/devices", json=body, headers=hub.operator_token())
    assert r.status_code == 422


def test_signed_consent_ack_with_overflowing_timestamp_is_400_not_500(hub: HubParts) -> None:
    """Fuzz finding (issue 18): a device-signed ack whose applied_at overflows datetime."""
    import cbor2

    from iotguard.identity import sign_device_request

    agent = hub.agent("dev-1")
    raw = cbor2.dumps({"v": 1, "type": "consent-ack", "device": "dev-1", "version": 1,
                       "config_sha256": bytes(32), "applied_at": 2**53 - 1}, canonical=True)
    signed = sign_device_request("consent_ack", "dev-1", {"ack": raw}, now=hub.services.clock.now(),
                                 sign=lambda m: agent.keystore.sign("identity", m))
    r = hub.client.post("/v1/consent/ack", json=signed.wire)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "malformed"
