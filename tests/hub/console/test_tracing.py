"""Optional OpenTelemetry traces: off by default; when on, one server span per API and console request,
joined to the caller's W3C traceparent, with the route template and request id, never the query string."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotguard.errors import ConfigError
from iotguard.hub.tracing import RequestTracer, tracer_from_config
from tests.hub.conftest import make_hub
from tests.hub.console.conftest import ConsoleHub

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _spans(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_traces_are_off_by_default(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    try:
        assert tracer_from_config(hub.cfg.otel_traces_file) is None
        assert not hasattr(hub.app.state, "tracer")
    finally:
        hub.store.engine.dispose()


def test_each_request_is_a_server_span_in_the_callers_trace(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    hub = make_hub(tmp_path, otel_traces_file=str(path))
    try:
        console = ConsoleHub(hub)
        hub.agent("dev-1")
        client = console.login("viewer")
        r = client.get("/console/devices/dev-1", params={"purpose": "secret-purpose"},
                       headers={"traceparent": PARENT, "X-Request-ID": "req-trace-1"})
        assert r.status_code == 403
        tracer: RequestTracer = hub.app.state.tracer
        tracer.flush()
        spans = _spans(path)
        assert (path.stat().st_mode & 0o777) == 0o600
        page = next(s for s in spans if s["attributes"]["iotguard.request_id"] == "req-trace-1")  # type: ignore[index]
        assert page["context"]["trace_id"] == "0x" + TRACE_ID  # type: ignore[index]
        assert page["parent_id"] == "0x00f067aa0ba902b7" and page["kind"] == "SpanKind.SERVER"
        assert page["name"] == "GET /console/devices/{device_id}"
        assert page["attributes"] == {  # type: ignore[comparison-overlap]
            "http.request.method": "GET", "url.path": "/console/devices/dev-1",
            "http.route": "/console/devices/{device_id}", "http.response.status_code": 403,
            "iotguard.request_id": "req-trace-1"}
        assert "secret-purpose" not in path.read_text()  # query strings never reach a span
        assert page["resource"]["attributes"]["service.name"] == "iotguard-hub"  # type: ignore[index]
        untraced = [s for s in spans if s["attributes"]["iotguard.request_id"] != "req-trace-1"]  # type: ignore[index]
        assert untraced and all(s["parent_id"] is None for s in untraced)  # new traces without a traceparent
    finally:
        hub.app.state.tracer.shutdown()
        hub.store.engine.dispose()


def test_an_unwritable_traces_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        RequestTracer(str(tmp_path / "missing-dir" / "traces.jsonl"))
