"""Optional OpenTelemetry traces of the hub's HTTPS API and console (off by default, ADR 1405).

With ``hub.otel_traces_file`` set, every request becomes one server span:
joined to the caller's W3C ``traceparent`` header when it sends one, named
``METHOD /route/{template}``, with the method, the path (never the query
string: it can carry tokens, subject ids or purposes), the status, the
route template and the request id (docs/console.md). Spans are batched by the
OpenTelemetry SDK and written as JSON lines to the file, for a collector's
file receiver or ``jq``. The SDK is imported only when traces are on, and the
tracer provider is the hub's own (the process-wide OpenTelemetry globals are
left alone).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from iotguard import __version__
from iotguard.errors import ConfigError
from iotguard.hub.request_log import current_request_id

__all__ = ["RequestTracer", "tracer_from_config"]

_MAX_PATH = 256


class RequestTracer:
    """Starts a server span per HTTP request and exports finished spans to a JSON-lines file.

    Args:
        path: The file spans are appended to (created with mode 0600).

    Raises:
        ConfigError: the OpenTelemetry SDK is not installed, or the file cannot be opened.
    """

    def __init__(self, path: str) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
            from opentelemetry.trace import SpanKind, Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise ConfigError(f"hub.otel_traces_file needs opentelemetry-sdk: {exc}") from None
        try:
            fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ConfigError(f"hub.otel_traces_file {path}: {exc.strerror}") from None
        out = os.fdopen(fd, "a", encoding="utf-8")

        class _JsonLines(SpanExporter):
            def export(self, spans: Sequence[ReadableSpan]) -> Any:
                for span in spans:
                    out.write(json.dumps(json.loads(span.to_json()), separators=(",", ":")) + "\n")
                out.flush()
                return SpanExportResult.SUCCESS

            def shutdown(self) -> None:
                out.close()

        self._provider = TracerProvider(resource=Resource.create({"service.name": "iotguard-hub",
                                                                  "service.version": __version__}))
        self._provider.add_span_processor(BatchSpanProcessor(_JsonLines()))
        self._tracer = self._provider.get_tracer("iotguard.hub")
        self._propagator = TraceContextTextMapPropagator()
        self._server, self._status, self._error = SpanKind.SERVER, Status, StatusCode.ERROR

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """The request inside a server span (the caller's trace when it sent a valid ``traceparent``)."""
        parent = self._propagator.extract({k: v for k, v in request.headers.items() if k == "traceparent"})
        method, path = request.method, request.url.path[:_MAX_PATH]
        with self._tracer.start_as_current_span(f"{method} {path}", context=parent, kind=self._server,
                                                record_exception=False, set_status_on_exception=False) as span:
            span.set_attribute("http.request.method", method)
            span.set_attribute("url.path", path)
            status = 500
            try:
                response = await call_next(request)
                status = response.status_code
                return response
            finally:
                route = request.scope.get("route")
                template = getattr(route, "path", None)
                if isinstance(template, str):
                    root = request.scope.get("root_path", "")
                    span.set_attribute("http.route", f"{root}{template}"[:_MAX_PATH])
                    span.update_name(f"{method} {root}{template}"[:_MAX_PATH])
                span.set_attribute("http.response.status_code", status)
                span.set_attribute("iotguard.request_id", current_request_id())
                if status >= 500:
                    span.set_status(self._status(self._error))

    def flush(self) -> None:
        """Export every finished span now."""
        self._provider.force_flush()

    def shutdown(self) -> None:
        """Flush and close the file."""
        self._provider.shutdown()


def tracer_from_config(traces_file: str) -> RequestTracer | None:
    """The hub's request tracer, or None when ``hub.otel_traces_file`` is empty (the default).

    Raises:
        ConfigError: as :class:`RequestTracer`.
    """
    return RequestTracer(traces_file) if traces_file else None
