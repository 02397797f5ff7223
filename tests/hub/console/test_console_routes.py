"""Generated from the console's routing table: no console route shows anything to an anonymous visitor,
and every page and action refuses a role the default policy does not allow (a Cedar decision per route).

A route added later is covered by the same checks without editing this file.
"""

from __future__ import annotations

from starlette.routing import Mount

from iotguard.hub.store import ROLES
from tests.hub.console.conftest import ConsoleHub
from tests.hub.test_route_coverage import _routes

#: Routes that are the way in or out, reachable without a session (they show no data).
OPEN = {("GET", "/login"), ("POST", "/login"), ("GET", "/owner/login"), ("POST", "/owner/login"), ("GET", "/")}


def _console_routes(console: ConsoleHub) -> list[tuple[str, str]]:
    mount = next(r for r in console.hub.app.routes if isinstance(r, Mount) and r.path == "/console")
    return [(method, path) for method, path, _route in _routes(mount.app)]


def _url(path: str) -> str:
    return "/console" + path.replace("{device_id}", "dev-1").replace("{action_id}", "1").replace(
        "{rollout_id}", "thermo-1-2").replace("{move}", "pause")


def test_the_console_serves_the_routes_this_test_covers(console: ConsoleHub) -> None:
    routes = set(_console_routes(console))
    assert {("GET", "/fleet"), ("POST", "/devices/{device_id}/quarantine"), ("GET", "/owner"),
            ("POST", "/audit/verify")} <= routes and len(routes) > 15


def test_no_console_route_shows_anything_to_an_anonymous_visitor(console: ConsoleHub) -> None:
    console.hub.agent("dev-1")
    client = console.browser()
    for method, path in _console_routes(console):
        if (method, path) in OPEN:
            continue
        r = client.request(method, _url(path), data={"csrf": "x"} if method == "POST" else None)
        assert r.status_code == 401, (method, path, r.status_code)
        assert 'type="password"' in r.text, (method, path)


def test_every_console_route_asks_the_policy_engine(console: ConsoleHub) -> None:
    """Check for privilege escalation: each page or action refuses at least one role with a 403 page
    (an owner's session is one of the principals tried)."""
    console.hub.agent("dev-1")
    clients = {role: console.login(role) for role in ROLES}
    csrf = {role: console.csrf(c, "/console/fleet") if role in ("viewer", "operator", "security-admin")
            else None for role, c in clients.items()}
    violations = []
    for method, path in _console_routes(console):
        if (method, path) in OPEN or path == "/logout":
            continue
        statuses = {}
        for role, client in clients.items():
            data = {"csrf": csrf[role] or "x", "purpose": "research", "decision": "grant",
                    "subject": "s-1"} if method == "POST" else None
            statuses[role] = client.request(method, _url(path), data=data).status_code
        if 403 not in statuses.values():
            violations.append((method, path, statuses))
    assert violations == []
