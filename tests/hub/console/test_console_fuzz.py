"""Untrusted input to the console never yields a 500 or a traceback: random form bodies, query strings
and cookies on every route answer with a page and a 4xx (or the page itself)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hub.console.conftest import ConsoleHub
from tests.hub.console.test_console_routes import _console_routes, _url

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=64)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=512), query=st.dictionaries(_text, _text, max_size=4), cookie=_text)
def test_random_input_on_every_route_is_never_a_server_error(console: ConsoleHub, body: bytes,
                                                             query: dict[str, str], cookie: str) -> None:
    if not hasattr(console, "_client"):
        console.hub.agent("dev-1")
        console._client = console.login("security-admin")  # type: ignore[attr-defined]
    client = console._client  # type: ignore[attr-defined]
    for method, path in _console_routes(console):
        headers = {"content-type": "application/x-www-form-urlencoded"}
        r = client.request(method, _url(path), content=body if method == "POST" else None, params=query,
                           headers=headers)
        assert r.status_code < 500, (method, path, r.status_code)
        assert "Traceback" not in r.text
    anonymous = console.browser()
    anonymous.cookies.set("iotguard_console", cookie.encode("utf-8", "replace").decode("latin-1", "replace"),
                          domain="testserver", path="/console")
    r = anonymous.get("/console/fleet", params=query)
    assert r.status_code in (400, 401)
