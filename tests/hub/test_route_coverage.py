"""Generated from the application's routing table: no route answers an anonymous caller
(except ``/health`` and, when an operator turns them on, the API docs), and every route
refuses a principal the default policy does not allow.

Nothing here is a hand list of routes: a route added later is covered by the same
checks, and this test fails if it is reachable anonymously, accepts any bearer token
without asking Cedar, or (for a device route) skips the device plane's decision.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from iotguard.agent import Agent
from iotguard.hub.device_plane import DEVICE_ACTION_EXTENSION
from iotguard.hub.ratelimit_store import attempt_limits
from iotguard.hub.store import ROLES
from iotguard.policy import PolicySet, default_policy_set
from tests.hub.conftest import HubParts, make_hub


def _transport_pk() -> bytes:
    """A fresh transport public key (renewals carry one, ADR 0600)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().public_key().public_bytes_raw()

ANONYMOUS = {("GET", "/health")}
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
QUERY = {"index": 0, "tree_size": 1, "old_size": 0, "new_size": 1, "start": 0, "end": 1}


def _routes(app: Any) -> Iterator[tuple[str, str, Any]]:
    """Every route the app serves, including those of the routers it includes (one per capability)."""
    pending = list(app.routes)
    while pending:
        route = pending.pop(0)
        included = getattr(route, "original_router", None)
        if included is not None:
            pending.extend(included.routes)
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            if method not in ("HEAD", "OPTIONS"):
                yield method, route.path, route


def _path(path: str, device_id: str) -> str:
    return path.replace("{device_id}", device_id).replace("{subject_id}", "subject-1")


def _example(model: type[BaseModel], device_id: str) -> dict[str, Any]:
    """A body that fits ``model``, so a refusal cannot be a validation error."""
    body: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        hint = field.annotation
        if hint is bool:
            body[name] = True
        elif hint is int:
            body[name] = 1
        elif typing.get_origin(hint) is list:
            body[name] = []
        else:
            body[name] = device_id if name == "device_id" else "thermo-1" if name == "model" else "x"
    return body


def _body(route: Any, device_id: str) -> dict[str, Any]:
    field = getattr(route, "body_field", None)
    hint = field.field_info.annotation if field is not None else None
    for model in (hint, *typing.get_args(hint)):
        if isinstance(model, type) and issubclass(model, BaseModel):
            return _example(model, device_id)
    return {}


def _device_action(route: Any) -> str | None:
    extra = getattr(route, "openapi_extra", None) or {}
    action = extra.get(DEVICE_ACTION_EXTENSION)
    return str(action) if action else None


def _signed_body(agent: Agent, action: str) -> dict[str, str]:
    bodies: dict[str, dict[str, Any]] = {
        "rekey": {"epoch": agent.sealer.epoch + 1, "kex_public_key": b"\x09" * 32, "suites": ["chacha20-poly1305"]},
        "renew": {"transport_public_key": _transport_pk()}, "tamper_report": {"reason": "coverage"},
        "upload_receipt": {"receipt": b"r"},
        "consent_ack": {"ack": b"a"},
        "attest": {"nonce": b"", "evidence": b"", "attestation_key": b"", "algorithm": ""},
        "aggregate": {"round": "00" * 16, "step": "poll", "message": b""},
        "learn_task": {"run_id": "run-1"},
        "learn_update": {"run_id": "run-1", "base_version": 0, "num_examples": 1, "update": b"u"},
        "learn_model": {"name": "digits", "version": 0},
        "update_fetch": {"path": "metadata/1.root.json"},
        "update_check": {"version": 1, "attempted": 0, "outcome": "none"},
        "report_flows": {"flows": b"\xa0"},
        "report_health": {"metrics": b"\xa0"},
        "certify_ak": {"ak_public_area": b"", "secret": b"", "ek_certificate": b""},
    }
    return agent._signed(action, bodies[action])[0]


@pytest.fixture
def fleet(hub: HubParts) -> HubParts:
    hub.agent("dev-1")
    return hub


def test_the_app_serves_the_routes_this_test_expects_to_cover(fleet: HubParts) -> None:
    routes = {(m, p) for m, p, _r in _routes(fleet.app)}
    assert ("POST", "/v1/rekey") in routes and ("GET", "/v1/devices") in routes and len(routes) > 20
    devices = {p for _m, p, r in _routes(fleet.app) if _device_action(r)}
    assert devices == {"/v1/rekey", "/v1/renew", "/v1/tamper", "/v1/receipts", "/v1/consent/ack",
                       "/v1/attest", "/v1/attest/ak", "/v1/aggregate",
                       "/v1/learn/task", "/v1/learn/update", "/v1/learn/model",
                       "/v1/firmware/fetch", "/v1/firmware/check",
                       "/v1/flows", "/v1/device-health"}


def _anonymous_violations(hub: HubParts) -> list[tuple[str, str, int]]:
    found = []
    for method, path, route in _routes(hub.app):
        if (method, path) in ANONYMOUS:
            assert hub.client.request(method, path).status_code == 200
            continue
        r = hub.client.request(method, _path(path, "dev-1"), json=_body(route, "dev-1"), params=QUERY)
        if r.status_code not in (401, 403) or r.json().get("error") != "unauthenticated":
            found.append((method, path, r.status_code))
    return found


def _policy_violations(hub: HubParts) -> list[tuple[str, str, dict[str, Any]]]:
    tokens = {role: hub.operator_token(role) for role in ROLES}
    found = []
    for method, path, route in _routes(hub.app):
        if (method, path) in ANONYMOUS or _device_action(route):
            continue
        outcomes = {}
        for role, headers in tokens.items():
            r = hub.client.request(method, _path(path, "dev-1"), json=_body(route, "dev-1"), params=QUERY,
                                   headers=headers)
            outcomes[role] = (r.status_code, r.json().get("error") if r.status_code >= 400 else None)
        if all(status == 401 for status, _e in outcomes.values()):
            continue  # a route whose credential is in the body (enroll, bootstrap): bearer tokens are nothing
        if not any(status == 403 and error == "policy_denied" for status, error in outcomes.values()):
            found.append((method, path, outcomes))
    return found


def test_no_route_answers_an_anonymous_caller(fleet: HubParts) -> None:
    assert _anonymous_violations(fleet) == []


def test_an_added_anonymous_route_is_caught(fleet: HubParts) -> None:
    """The check itself: a route someone adds without authentication makes it fail."""

    @fleet.app.get("/v1/leak")
    def leak() -> dict[str, str]:
        return {"secret": "everything"}

    assert _anonymous_violations(fleet) == [("GET", "/v1/leak", 200)]


def test_only_health_and_docs_are_anonymous_when_docs_are_on(tmp_path: Path) -> None:
    parts = make_hub(tmp_path, api_docs=True)
    try:
        for method, path, route in _routes(parts.app):
            r = parts.client.request(method, _path(path, "dev-1"), json=_body(route, "dev-1"), params=QUERY)
            if (method, path) in ANONYMOUS or path in DOCS:
                assert r.status_code == 200, (method, path)
            else:
                assert r.status_code in (401, 403), (method, path, r.status_code)
    finally:
        parts.store.engine.dispose()


def test_every_operator_route_asks_the_policy_engine(fleet: HubParts) -> None:
    """Check for privilege escalation: a route that took any valid token without a Cedar decision
    would accept every role; here each route refuses at least one role with ``policy_denied``."""
    assert _policy_violations(fleet) == []


def test_an_added_route_without_a_policy_decision_is_caught(fleet: HubParts) -> None:
    from fastapi import Depends, Request

    def any_token(request: Request) -> None:
        fleet.store.authenticate_api_token(request.headers.get("authorization", "").removeprefix("Bearer "))

    @fleet.app.get("/v1/everyone", dependencies=[Depends(any_token)])
    def everyone() -> dict[str, str]:
        return {"all": "yours"}

    assert [v[:2] for v in _policy_violations(fleet)] == [("GET", "/v1/everyone")]


def test_every_device_route_refuses_operators_and_other_principals(fleet: HubParts) -> None:
    agent = fleet.agent("dev-2")
    admin = fleet.operator_token("security-admin")
    fleet.registry.revoke("dev-2")
    good = fleet.agent("dev-3")
    for method, path, route in _routes(fleet.app):
        action = _device_action(route)
        if action is None:
            continue
        with fleet.store.engine.begin() as c:  # each route starts below the per-address failure lockout
            c.execute(attempt_limits.delete())
        r = fleet.client.request(method, path, json={}, headers=admin)
        assert r.status_code == 401, (path, "operator token on a device route", r.text)
        r = fleet.client.request(method, path, json=_signed_body(agent, action))
        assert (r.status_code, r.json()["error"]) == (403, "revoked"), (path, "revoked device", r.text)
        other = "renew" if action != "renew" else "tamper_report"
        r = fleet.client.request(method, path, json=_signed_body(good, other))
        assert (r.status_code, r.json()["error"]) == (400, "malformed"), (path, "request for another action", r.text)


def test_every_device_route_asks_the_policy_engine(fleet: HubParts) -> None:
    """A policy that forbids a device action refuses it on its route: the route takes the Cedar decision."""
    agent = fleet.agent("dev-2")
    routes = [(m, p, _device_action(r)) for m, p, r in _routes(fleet.app) if _device_action(r)]
    for method, path, action in routes:
        assert action is not None
        text = default_policy_set().text + f'\n@id("test-forbid")\nforbid (principal, action == Action::"{action}", ' \
                                           f'resource);\n'
        fleet.services.posture.engine.load(PolicySet(text))
        r = fleet.client.request(method, path, json=_signed_body(agent, action))
        assert (r.status_code, r.json()["error"]) == (403, "policy_denied"), (path, r.text)
    fleet.services.posture.engine.load(default_policy_set())
