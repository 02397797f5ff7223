"""REST endpoints of the audit log, and the HTTP client monitors and witnesses use.

``make_audit_router(log, require_operator)`` returns an ``APIRouter`` with:

* ``GET  /audit/checkpoint`` -- latest signed checkpoint (``text/plain`` note)
* ``GET  /audit/checkpoint/final`` -- latest checkpoint with the k-of-n witness
  cosignatures that made it final (``hub.witnesses_file``; 404 ``no_final_checkpoint``)
* ``POST /audit/checkpoint`` -- publish a checkpoint of the current tree now
* ``GET  /audit/proof/inclusion?index=I&tree_size=N`` -- inclusion proof
* ``GET  /audit/proof/consistency?old_size=M&new_size=N`` -- consistency proof
* ``GET  /audit/entries?start=S&end=E`` -- leaf bytes (base64), at most
  :data:`~iotguard.audit.log.MAX_ENTRIES_PER_READ` per call
* ``GET  /audit/export?start=S&end=E`` -- an offline-verifiable export bundle

Every endpoint depends on ``require_operator`` (entries name devices and
operators; proofs are cheap but not free), so auditors and witnesses use an
operator-issued API token.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import PlainTextResponse, Response

from iotguard.audit.log import MAX_ENTRIES_PER_READ, TransparencyLog
from iotguard.audit.verify import export_segment
from iotguard.errors import IotGuardError, MalformedError, StorageError, public_message

__all__ = ["HttpLogSource", "make_audit_router"]

#: Largest export served in one response (entries).
MAX_EXPORT_ENTRIES = 100_000

_STATUS = {"bad_proof": 400, "malformed": 400, "storage_error": 503}


def _error(exc: IotGuardError) -> HTTPException:
    return HTTPException(
        _STATUS.get(exc.code, 400), detail={"code": exc.code, "message": public_message(exc.code)}
    )


def _b64(items: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in items]


def make_audit_router(log: TransparencyLog, require_operator: Callable[..., Any]) -> APIRouter:
    """Build the audit API.

    Args:
        log: The hub's transparency log (with its checkpoint signer).
        require_operator: FastAPI dependency that authenticates an operator
            (raises an HTTP error otherwise).
    """
    router = APIRouter(prefix="/audit", tags=["audit"], dependencies=[Depends(require_operator)])

    @router.get("/checkpoint", response_class=PlainTextResponse)
    def latest_checkpoint() -> Response:
        note = log.latest_checkpoint()
        if note is None:
            raise HTTPException(
                404, detail={"code": "no_checkpoint", "message": "no checkpoint published yet"}
            )
        return PlainTextResponse(note)

    @router.get("/checkpoint/final", response_class=PlainTextResponse)
    def latest_final_checkpoint() -> Response:
        note = log.latest_final_checkpoint()
        if note is None:
            raise HTTPException(
                404, detail={"code": "no_final_checkpoint",
                             "message": "no checkpoint has the witness cosignatures that make it final"}
            )
        return PlainTextResponse(note)

    @router.post("/checkpoint", response_class=PlainTextResponse)
    def publish_checkpoint() -> Response:
        try:
            return PlainTextResponse(log.publish_checkpoint())
        except IotGuardError as exc:
            raise _error(exc) from None

    @router.get("/proof/inclusion")
    def inclusion(
        index: int = Query(ge=0), tree_size: int | None = Query(default=None, ge=1)
    ) -> dict[str, Any]:
        try:
            size = tree_size if tree_size is not None else log.size()
            proof = log.inclusion_proof(index, size)
            leaf = log.leaf_hash(index)
        except IotGuardError as exc:
            raise _error(exc) from None
        return {"index": index, "tree_size": size, "leaf_hash": _b64([leaf])[0], "proof": _b64(proof)}

    @router.get("/proof/consistency")
    def consistency(
        old_size: int = Query(ge=1), new_size: int | None = Query(default=None, ge=1)
    ) -> dict[str, Any]:
        try:
            size = new_size if new_size is not None else log.size()
            proof = log.consistency_proof(old_size, size)
        except IotGuardError as exc:
            raise _error(exc) from None
        return {"old_size": old_size, "new_size": size, "proof": _b64(proof)}

    @router.get("/entries")
    def entries(start: int = Query(ge=0), end: int = Query(ge=0)) -> dict[str, Any]:
        end = min(end, start + MAX_ENTRIES_PER_READ, log.size())
        try:
            data = log.entries(start, max(start, end))
        except IotGuardError as exc:
            raise _error(exc) from None
        return {"start": start, "entries": _b64(data)}

    @router.get("/export")
    def export(start: int = Query(default=0, ge=0), end: int | None = Query(default=None, ge=0)) -> Response:
        note = log.latest_checkpoint()
        if note is None:
            note = log.publish_checkpoint()
        try:
            size = int(note.split("\n", 2)[1])
            stop = size if end is None else min(end, size)
            if stop - start > MAX_EXPORT_ENTRIES:
                raise MalformedError("export range too large; page it")
            bundle = export_segment(log, start, stop, note)
        except (IotGuardError, ValueError) as exc:
            raise _error(exc if isinstance(exc, IotGuardError) else MalformedError()) from None
        return Response(bundle.to_json(), media_type="application/json")

    return router


class HttpLogSource:
    """A monitor's / witness's view of a log served by :func:`make_audit_router`.

    Args:
        base_url: The hub API URL (``https://host:8080``).
        token: Operator API token, sent as ``Authorization: Bearer``.
        client: An ``httpx.Client`` to use (tests pass FastAPI's TestClient).
        timeout: Request timeout in seconds.
        cafile: CA certificate to verify the hub's HTTPS certificate against
            (the hub's ``<data_dir>/fleet-ca.pem``); the system store when None.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        cafile: str | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if client is None:
            from iotguard.tls import client_context

            verify: ssl.SSLContext | bool = client_context(cafile) if cafile else True
            client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, verify=verify)
        self._client = client
        self._headers = headers

    def _get(self, path: str, params: dict[str, int]) -> httpx.Response:
        try:
            response = self._client.get(path, params=params, headers=self._headers)
        except httpx.HTTPError as exc:
            raise StorageError(f"log unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise StorageError(f"log answered {response.status_code} for {path}")
        return response

    @staticmethod
    def _decode(items: Any) -> list[bytes]:
        if not isinstance(items, list):
            raise MalformedError("log sent a malformed list")
        try:
            return [base64.b64decode(x, validate=True) for x in items]
        except (binascii.Error, ValueError, TypeError):
            raise MalformedError("log sent malformed base64") from None

    def latest_checkpoint(self) -> str:
        return self._get("/audit/checkpoint", {}).text

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        body = self._get("/audit/proof/consistency", {"old_size": old_size, "new_size": new_size}).json()
        return self._decode(body.get("proof"))

    def entries(self, start: int, end: int) -> list[bytes]:
        return self._decode(self._get("/audit/entries", {"start": start, "end": end}).json().get("entries"))
