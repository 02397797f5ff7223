"""API request bodies: Hypothesis over every route's pydantic body model, in process.

schemathesis is not in the locked environment, so the bodies are generated
here from the routing table (a route added later is covered too): for each
route with a JSON body, random JSON shaped like its model (right keys,
arbitrary values, and sometimes extra or missing keys) is posted with a bearer
token of a random role. Any status >= 500, or an exception escaping the app
(``TestClient`` re-raises them), fails the test.
"""

from __future__ import annotations

import base64
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from iotguard.hub.store import ROLES
from tests.hub.conftest import HubParts, make_hub
from tests.hub.test_route_coverage import QUERY, _path, _routes

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _fields(route: Any) -> list[str] | None:
    """The body's keys: the pydantic model's fields, or the schema a route declares in ``openapi_extra``."""
    field = getattr(route, "body_field", None)
    hint = field.field_info.annotation if field is not None else None
    for model in (hint, *typing.get_args(hint)):
        if isinstance(model, type) and issubclass(model, BaseModel):
            return list(model.model_fields)
    extra = getattr(route, "openapi_extra", None) or {}
    schema = extra.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    return list(schema["properties"]) if "properties" in schema else None


_SEEDS = [p.read_bytes() for p in sorted((Path(__file__).parent / "corpus" / "signed_request").iterdir())]
_B64 = st.builds(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode(),
                 st.binary(max_size=300) | st.sampled_from(_SEEDS)
                 | st.builds(lambda seed, i, v: seed[:i % len(seed)] + bytes((v,)) + seed[i % len(seed) + 1:],
                             st.sampled_from(_SEEDS), st.integers(0, 500), st.integers(0, 255)))


def _body(fields: list[str]) -> st.SearchStrategy[Any]:
    values = {name: _JSON | st.text(max_size=200) | _B64 for name in fields}
    shaped = st.fixed_dictionaries({}, optional=values)
    return shaped | st.builds(lambda d, extra: {**d, **extra}, shaped, st.dictionaries(st.text(max_size=8), _JSON,
                                                                                         max_size=2)) | _JSON


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubParts, list[tuple[str, str, Any]]]]:
    hub = make_hub(Path(tmp_path_factory.mktemp("api-fuzz")))
    hub.agent("dev-1")
    routes = [(m, p, _fields(r)) for m, p, r in _routes(hub.app) if _fields(r) is not None]
    yield hub, routes
    hub.store.engine.dispose()


def test_the_api_has_body_routes_to_fuzz(api: tuple[HubParts, list[tuple[str, str, Any]]]) -> None:
    _hub, routes = api
    paths = {p for _m, p, _f in routes}
    assert {"/v1/enroll", "/v1/rekey", "/v1/consent/ack"} <= paths, paths


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_random_bodies_never_get_a_server_error(api: tuple[HubParts, list[tuple[str, str, Any]]],
                                                data: st.DataObject) -> None:
    hub, routes = api
    method, path, fields = data.draw(st.sampled_from(routes))
    role = data.draw(st.sampled_from(sorted(ROLES)))
    body = data.draw(_body(fields))
    r = hub.client.request(method, _path(path, "dev-1"), json=body, params=QUERY, headers=hub.operator_token(role))
    assert r.status_code < 500, (method, path, body, r.status_code, r.text[:300])
