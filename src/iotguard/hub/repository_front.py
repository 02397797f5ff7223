"""The firmware repository's read path on the hub's HTTPS listener, in front of the API application (ADR 1220).

``GET /v1/firmware/repository/<path>`` is the hottest request a fleet makes
(every device's "nothing new" refresh: the next root, then the timestamp)
and the simplest: no body, no bearer token, no state change. So it is
answered here, before the API's middleware and its route table (a hundred
routes matched in turn), from :class:`~iotguard.hub.services.repository_reads.RepositoryReads`;
every other request goes to the API application unchanged. Refusals have
the API's shape and status (``{"error", "message"}`` through the same table).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.concurrency import run_in_threadpool

from iotguard.errors import IotGuardError, MalformedError, public_message
from iotguard.hub.api import HTTP_STATUS
from iotguard.hub.device_tls import peer_certificate
from iotguard.hub.services.repository_reads import RepositoryReads

__all__ = ["REPOSITORY_ROUTE", "RepositoryFront"]

#: Devices read repository files under this prefix (GET, authenticated by their TLS client certificate).
REPOSITORY_ROUTE = "/v1/firmware/repository"
_PREFIX = REPOSITORY_ROUTE + "/"
#: Longest repository path accepted (the signed ``update_fetch`` request's bound).
MAX_PATH_CHARS = 256

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RepositoryFront:
    """An ASGI application: repository reads answered here, everything else passed to ``app``.

    Args:
        app: The hub's API application.
        reads: The repository read service.
    """

    def __init__(self, app: ASGIApp, reads: RepositoryReads) -> None:
        self.app = app
        self.reads = reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(_PREFIX):
            await self.app(scope, receive, send)
            return
        path = scope["path"][len(_PREFIX):]
        peer = peer_certificate(scope)
        try:
            if len(path) > MAX_PATH_CHARS:
                raise MalformedError("repository path too long")
            body = self.reads.cached(peer, path)
            if body is None:
                body = await run_in_threadpool(self.reads.read, peer, path)
        except IotGuardError as exc:
            status = HTTP_STATUS.get(exc.code, 500)
            await _respond(send, status, json.dumps({"error": exc.code, "message": public_message(exc.code)})
                           .encode(), b"application/json")
            return
        await _respond(send, 200, body, b"application/octet-stream")


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
