"""Request ids and structured (JSON) logs for the hub's HTTPS API and console.

Every request gets an id: the caller's ``X-Request-ID`` when it is a short token
(letters, digits, ``._-``, at most 64), otherwise a fresh one. The id is echoed
in the response header, attached to every log record written while the
request runs, and one access line per request goes to the ``iotguard.access``
logger with method, path, status and duration. Query strings, headers and
bodies are never logged (they can carry tokens, subject ids and readings).
``iotguard --log-format json`` writes every log record as one JSON object.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["REQUEST_ID_HEADER", "JsonLogFormatter", "RequestIdFilter", "configure_json_logging",
           "current_request_id", "request_id_middleware"]

#: Header that carries a request's id in and out.
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("iotguard_request_id", default="")
access_log = logging.getLogger("iotguard.access")


def current_request_id() -> str:
    """The id of the request being served ("" outside a request)."""
    return _request_id.get()


def _incoming_id(value: str | None) -> str:
    if value and _VALID_ID.fullmatch(value):
        return value
    return secrets.token_hex(8)


async def request_id_middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Give the request an id, log one access line, echo the id in the response."""
    request_id = _incoming_id(request.headers.get(REQUEST_ID_HEADER))
    token = _request_id.set(request_id)
    start = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        access_log.info("request", extra={"http": {"method": request.method, "path": request.url.path[:256],
                                                   "status": status,
                                                   "duration_ms": round((time.perf_counter() - start) * 1000, 2)}})
        _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, request id, HTTP fields, exception type."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "") or current_request_id()
        if request_id:
            doc["request_id"] = request_id
        http = getattr(record, "http", None)
        if isinstance(http, dict):
            doc["http"] = http
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = record.exc_info[0].__name__  # the type only: messages can quote data
        return json.dumps(doc, default=str)


def configure_json_logging(level: int) -> None:
    """Make the root logger write JSON lines (with request ids) to standard error."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
