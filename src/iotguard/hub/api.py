"""REST API (FastAPI; OpenAPI at ``/openapi.json`` only when ``hub.api_docs`` is on).

Every route but ``/health`` is authenticated and decided by Cedar: operators
with a bearer token created by ``iotguard tokens create``; devices through
the one device plane (:mod:`iotguard.hub.device_plane`): their enrollment
token and proof of possession (``/v1/enroll``) or a signed device request.
Errors are mapped from reason codes to HTTP status and a public message
through :data:`HTTP_STATUS`; internals never reach clients.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, Field

from iotguard import __version__
from iotguard.audit import AuditEvent, EventType, TransparencyLog
from iotguard.clock import Clock
from iotguard.errors import (
    AuthenticationError,
    IotGuardError,
    MalformedError,
    public_message,
)
from iotguard.hub.audit_api import make_audit_router
from iotguard.hub.credentials import record_use, redeem_bootstrap
from iotguard.hub.device_plane import (
    DevicePlane,
    body_openapi,
    client_address,
    credential_body,
    device_request,
    signed_request_openapi,
)
from iotguard.hub.ingest import IngestStats
from iotguard.hub.policy_store import save_posture
from iotguard.hub.privacy_store import PrivacyStore
from iotguard.hub.ratelimit import LockedOut
from iotguard.hub.registry import FleetRegistry
from iotguard.hub.store import ApiToken, HubStore
from iotguard.identity import VerifiedRequest
from iotguard.policy import PolicyAdministration, PolicyEngine, PostureStore, authorize_operator
from iotguard.privacy import ConsentAck, load_contract
from iotguard.wire import decode_reading

__all__ = ["HTTP_STATUS", "create_app"]

log = logging.getLogger(__name__)

#: HTTP status per reason code; ``tests/hub/test_hub_api.py`` checks every code has one.
HTTP_STATUS: dict[str, int] = {
    "error": 500,
    "config_invalid": 500,
    "malformed": 400,
    "forged": 401,
    "replay": 409,
    "stale": 409,
    "unknown_device": 404,
    "revoked": 403,
    "expired": 403,
    "enrollment_failed": 403,
    "unauthenticated": 401,
    "locked_out": 429,
    "policy_denied": 403,
    "keystore_error": 503,
    "tampered": 503,
    "puf_quality": 503,
    "usage_limit": 409,
    "rollback": 409,
    "no_consent": 403,
    "budget_exhausted": 429,
    "bad_proof": 422,
    "storage_error": 503,
}

class DeviceCreate(BaseModel):
    """Register a device; the response carries its one-time enrollment code."""

    device_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model: str = Field(min_length=1, max_length=64)
    segment: str = Field(default="default", min_length=1, max_length=64)
    serial: str | None = Field(default=None, max_length=128)


class EnrollRequest(BaseModel):
    device_id: str = Field(max_length=64)
    token: str = Field(max_length=64)
    identity_public_key: str = Field(max_length=64)
    kex_public_key: str = Field(max_length=64)
    #: Ed25519 public key of the device's TLS transport key (ADR 0600).
    transport_public_key: str = Field(max_length=64)
    suites: list[str] = Field(max_length=8)
    signature: str = Field(max_length=128)


class ConsentChange(BaseModel):
    """A data subject's consent decision for one purpose (recorded by a privacy officer or the owner's portal)."""

    subject_id: str = Field(min_length=1, max_length=128)
    purpose: str = Field(min_length=1, max_length=32)
    granted: bool


class SubjectLink(BaseModel):
    subject_id: str = Field(min_length=1, max_length=128)
    device_id: str = Field(max_length=64)


class BootstrapRedeem(BaseModel):
    bootstrap_token: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)


class ReasonBody(BaseModel):
    reason: str = Field(default="", max_length=256)


class _StatsCollector:
    def __init__(self, stats: IngestStats) -> None:
        self.stats = stats

    def collect(self) -> Any:
        snap = self.stats.snapshot()
        stored = CounterMetricFamily("iotguard_readings_stored", "Readings durably stored")
        stored.add_metric([], snap["stored"])
        yield stored
        rej = CounterMetricFamily("iotguard_envelopes_rejected", "Envelopes rejected", labels=["reason"])
        for reason, n in sorted(snap["rejected"].items()):
            rej.add_metric([reason], n)
        yield rej
        batches = CounterMetricFamily("iotguard_ingest_batches", "Ingest batches committed")
        batches.add_metric([], snap["batches"])
        yield batches
        lat = GaugeMetricFamily("iotguard_ingest_latency_ms", "End-to-end latency percentiles",
                                labels=["quantile"])
        for q, v in self.stats.latency_percentiles().items():
            lat.add_metric([q], v)
        yield lat


def create_app(store: HubStore, registry: FleetRegistry, stats: IngestStats, *, policy: PolicyEngine,
               posture: PostureStore, policy_admin: PolicyAdministration, audit: TransparencyLog,
               clock: Clock, privacy: PrivacyStore | None = None, device_plane: DevicePlane | None = None,
               api_docs: bool = False,
               on_consent_change: Callable[[str], None] | None = None,
               on_posture_change: Callable[[str], None] | None = None) -> FastAPI:
    """Build the hub's FastAPI application.

    Every operator request is decided by ``policy`` (Cedar): the token's role
    is the principal's role, the route names the action and the resource.
    Every device request goes through ``device_plane``. The OpenAPI schema
    and its pages (``/docs``, ``/redoc``) are served, anonymously, only when
    ``api_docs`` is on.
    """
    app = FastAPI(title="iotguard hub", version=__version__,
                  description="Device registry, enrollment, telemetry and operations API.",
                  openapi_url="/openapi.json" if api_docs else None,
                  docs_url="/docs" if api_docs else None, redoc_url="/redoc" if api_docs else None)
    if api_docs:
        log.warning("hub.api_docs is on: /docs, /redoc and /openapi.json answer without authentication")
    bearer = HTTPBearer(auto_error=False)
    metrics_registry = CollectorRegistry()
    metrics_registry.register(_StatsCollector(stats))
    api_requests = Counter("iotguard_api_requests", "API requests", ["route", "status"],
                           registry=metrics_registry)
    Gauge("iotguard_info", "Hub version", ["version"], registry=metrics_registry).labels(__version__).set(1)

    privacy_store = privacy or PrivacyStore(store.engine, audit=audit, keystore=registry.keystore)
    plane = device_plane or DevicePlane(store, policy, audit, clock)
    app.state.device_plane = plane

    def operator(action: str | None, resource_type: str = "Hub",
                 path_param: str | None = None) -> Callable[..., ApiToken]:
        """Dependency: authenticate the bearer token, then (unless ``action`` is None) decide the request."""

        def dep(request: Request,
                creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiToken:  # noqa: B008
            if creds is None or creds.scheme.lower() != "bearer":
                raise AuthenticationError("bearer token required")
            attempt = plane.attempt("api", client_address(request))
            token_id = creds.credentials.split("_")[1][:32] if creds.credentials.count("_") >= 2 else "-"
            attempt.credential(("api-token", token_id))
            try:
                token = store.authenticate_api_token(creds.credentials)
            except AuthenticationError:
                audit.record(AuditEvent(EventType.AUTH_FAILED, attempt.now, "api", "api",
                                        {"what": "api_token", "path": request.url.path[:128]}))
                attempt.failed()
                raise
            attempt.succeeded()
            record_use(store, token.token_id, attempt.now)
            if action is not None:
                resource_id = str(request.path_params[path_param]) if path_param else "hub"
                authorize_operator(policy, token.name, token.role, action, resource_type, resource_id)
            return token

        return dep

    @app.exception_handler(IotGuardError)
    async def _iotguard_error(request: Request, exc: IotGuardError) -> JSONResponse:
        status = HTTP_STATUS.get(exc.code, 500)
        api_requests.labels(request.url.path.split("/")[2] if request.url.path.count("/") > 1 else "",
                            str(status)).inc()
        if status >= 500:
            log.error("API %s failed: %s", request.url.path, exc.code)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
        if isinstance(exc, LockedOut):
            headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        return JSONResponse({"error": exc.code, "message": public_message(exc.code)}, status_code=status,
                            headers=headers or None)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, Any]:
        """Liveness: the only anonymous route."""
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics(_t: ApiToken = Depends(operator("view_alerts"))) -> PlainTextResponse:  # noqa: B008
        """Prometheus metrics (bearer token with read_metrics)."""
        return PlainTextResponse(generate_latest(metrics_registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/v1/enroll", tags=["devices"], openapi_extra=body_openapi(EnrollRequest))
    def enroll(request: Request,
               body: dict[str, Any] = Depends(credential_body(EnrollRequest, ("token", "signature")))  # noqa: B008
               ) -> dict[str, Any]:
        """Device enrollment: one-time token and proof of possession, then Cedar ``complete_enrollment``."""
        return plane.enroll(registry, body, client_address(request))

    @app.post("/v1/bootstrap", tags=["operators"], openapi_extra=body_openapi(BootstrapRedeem))
    def bootstrap(request: Request,
                  body: dict[str, Any] = Depends(credential_body(BootstrapRedeem, ("bootstrap_token",)))  # noqa: B008
                  ) -> dict[str, Any]:
        """Trade the one-time bootstrap token printed at first start for the first security-admin token."""
        attempt = plane.attempt("bootstrap", client_address(request))
        name = str(body["name"])
        authorize_operator(policy, name, "bootstrap", "bootstrap", "Hub", "hub", now=attempt.now)
        try:
            token = redeem_bootstrap(store, str(body["bootstrap_token"]), name, attempt.now)
        except IotGuardError:
            audit.record(AuditEvent(EventType.AUTH_FAILED, attempt.now, "api", "api", {"what": "bootstrap"}))
            attempt.failed()
            raise
        audit.record(AuditEvent("operator.bootstrapped", attempt.now, name, "api", {"role": "security-admin"}))
        return {"token": token, "role": "security-admin"}

    @app.post("/v1/rekey", tags=["devices"], openapi_extra=signed_request_openapi("rekey"))
    def rekey(req: VerifiedRequest = Depends(device_request(plane, "rekey"))) -> dict[str, Any]:  # noqa: B008
        """Move a device to its next key epoch (signed device request)."""
        return registry.rekey(req)

    @app.post("/v1/tamper", tags=["devices"], openapi_extra=signed_request_openapi("tamper_report"))
    def tamper(req: VerifiedRequest = Depends(device_request(plane, "tamper_report"))  # noqa: B008
               ) -> dict[str, Any]:
        """A device reports tampering: its trust tier drops to ``failed`` and every enforcement point refuses it."""
        device_id = registry.tamper_report(req)
        if posture.get(device_id) is not None:
            posture.update(device_id, trust_tier="failed")
            save_posture(store.engine, [posture.require(device_id)], now=clock.now())
            if on_posture_change is not None:
                on_posture_change(device_id)
        return {"device_id": device_id, "trust_tier": "failed"}

    @app.post("/v1/renew", tags=["devices"], openapi_extra=signed_request_openapi("renew"))
    def renew(req: VerifiedRequest = Depends(device_request(plane, "renew"))) -> dict[str, Any]:  # noqa: B008
        """A device renews its operational certificate before expiry (signed device request)."""
        return registry.renew(req)

    @app.get("/v1/devices", tags=["devices"])
    def list_devices(status: str | None = None, limit: int = 100, offset: int = 0,
                     _t: ApiToken = Depends(operator("view_devices"))) -> list[dict[str, Any]]:  # noqa: B008
        """List registered devices."""
        return [d.to_dict() for d in store.list_devices(status=status, limit=min(limit, 1000), offset=offset)]

    @app.post("/v1/devices", tags=["devices"], status_code=201)
    def add_device(body: DeviceCreate,
                   t: ApiToken = Depends(operator(None))) -> dict[str, Any]:  # noqa: B008
        """Register a device; the enrollment code is returned once and never stored."""
        authorize_operator(policy, t.name, t.role, "enroll", "Device", body.device_id)
        code = registry.add_device(body.device_id, body.model, segment=body.segment, serial=body.serial,
                                   actor=t.name)
        return {"device_id": body.device_id, "enrollment_code": str(code)}

    @app.get("/v1/devices/{device_id}", tags=["devices"])
    def show_device(device_id: str,
                    _t: ApiToken = Depends(operator("view_devices", "Device", "device_id"))  # noqa: B008
                    ) -> dict[str, Any]:
        """One device, with its certificate."""
        d = store.get_device(device_id)
        return {**d.to_dict(), "certificate_pem": d.cert_pem,
                "readings": store.reading_count(device_id)}

    @app.post("/v1/devices/{device_id}/revoke", tags=["devices"])
    def revoke_device(device_id: str, body: ReasonBody | None = None,
                      t: ApiToken = Depends(operator("revoke", "Device", "device_id"))  # noqa: B008
                      ) -> dict[str, Any]:
        """Revoke a device; ingest refuses its data from now on."""
        registry.revoke(device_id, actor=t.name, reason=body.reason if body else "")
        return {"device_id": device_id, "status": "revoked"}

    @app.post("/v1/devices/{device_id}/reprovision", tags=["devices"])
    def reprovision_device(device_id: str,
                           t: ApiToken = Depends(operator("revoke", "Device", "device_id"))  # noqa: B008
                           ) -> dict[str, Any]:
        """Erase a device's keys, keep its old certificate on the CRL, return a new enrollment code."""
        code = registry.reprovision(device_id, actor=t.name)
        return {"device_id": device_id, "status": "pending", "enrollment_code": str(code)}

    @app.post("/v1/devices/{device_id}/decommission", tags=["devices"])
    def decommission_device(device_id: str,
                            t: ApiToken = Depends(operator("revoke", "Device", "device_id"))  # noqa: B008
                            ) -> dict[str, Any]:
        """Retire a device for good: revoke it and crypto-erase its session keys."""
        result = registry.decommission(device_id, actor=t.name)
        return {"device_id": device_id, "status": "decommissioned", "erased_epochs": list(result.erased_epochs)}

    @app.post("/v1/devices/{device_id}/quarantine", tags=["devices"])
    def quarantine_device(device_id: str, body: ReasonBody | None = None,
                          t: ApiToken = Depends(operator("quarantine", "Device", "device_id"))  # noqa: B008
                          ) -> dict[str, Any]:
        """Move a device into the quarantine segment: ingest, API and broker deny it at once."""
        policy_admin.quarantine(posture, device_id, actor=t.name, reason=body.reason if body else "")
        save_posture(store.engine, [posture.require(device_id)], now=clock.now())
        if on_posture_change is not None:
            on_posture_change(device_id)
        return {"device_id": device_id, "quarantined": True}

    @app.post("/v1/devices/{device_id}/release", tags=["devices"])
    def release_device(device_id: str, body: ReasonBody | None = None,
                       t: ApiToken = Depends(operator("release", "Device", "device_id"))  # noqa: B008
                       ) -> dict[str, Any]:
        """Return a device from quarantine (policy requires a fresh verified attestation)."""
        policy_admin.release(posture, device_id, actor=t.name, reason=body.reason if body else "")
        save_posture(store.engine, [posture.require(device_id)], now=clock.now())
        if on_posture_change is not None:
            on_posture_change(device_id)
        return {"device_id": device_id, "quarantined": False}

    @app.post("/v1/receipts", tags=["privacy"], openapi_extra=signed_request_openapi("upload_receipt"))
    def upload_receipt(req: VerifiedRequest = Depends(device_request(plane, "upload_receipt"))  # noqa: B008
                       ) -> dict[str, Any]:
        """A device's signed privacy receipt (carried in a signed device request)."""
        device = store.get_device(req.device_id)
        if device.identity_public_key is None:
            raise AuthenticationError("device has no identity key")
        claims = privacy_store.store_receipt(device.device_id, bytes(req.body["receipt"]),
                                             device.identity_public_key, clock.now(),
                                             contract=load_contract(device.model))
        return {"stored": True, "readings": len(claims.get("entries", []))}

    @app.post("/v1/subjects/link", tags=["privacy"])
    def link_subject(body: SubjectLink,
                     _t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """Record which data subject a device's readings are about."""
        store.get_device(body.device_id)
        privacy_store.link_device(body.subject_id, body.device_id, clock.now())
        return {"subject_id": body.subject_id, "device_id": body.device_id}

    @app.post("/v1/consent", tags=["privacy"])
    def change_consent(body: ConsentChange,
                       t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """Grant or withdraw a data subject's consent for a purpose (an audit event)."""
        state = privacy_store.set_consent(body.subject_id, body.purpose, body.granted, clock.now(), actor=t.name)
        if on_consent_change is not None:
            on_consent_change(body.subject_id)  # push the new configuration to the subject's devices
        return {"subject_id": body.subject_id, "version": state.version,
                "purposes": {p: d.granted for p, d in state.decisions.items()}}

    @app.post("/v1/consent/ack", tags=["privacy"], openapi_extra=signed_request_openapi("consent_ack"))
    def consent_ack(req: VerifiedRequest = Depends(device_request(plane, "consent_ack"))  # noqa: B008
                    ) -> dict[str, Any]:
        """A device confirms it applied a pushed consent configuration (signed device request)."""
        ack = ConsentAck.decode(bytes(req.body["ack"]))
        if ack.device_id != req.device_id:
            raise MalformedError("acknowledgement is for another device")
        privacy_store.record_consent_ack(ack, clock.now())
        return {"device_id": ack.device_id, "version": ack.version, "acknowledged": True}

    @app.post("/v1/subjects/{subject_id}/erase", tags=["privacy"])
    def subject_erase(subject_id: str,
                      t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """Erase everything held about a data subject (crypto-shredding their key); lists affected aggregates."""
        return privacy_store.erase_subject(subject_id, clock.now(), actor=t.name).to_dict()

    @app.get("/v1/subjects/{subject_id}/export", tags=["privacy"])
    def subject_export(subject_id: str,
                       _t: ApiToken = Depends(operator("manage_consent"))) -> dict[str, Any]:  # noqa: B008
        """Everything held about a data subject (access request), machine-readable."""
        return privacy_store.export_subject(subject_id, clock.now())

    @app.get("/v1/telemetry", tags=["telemetry"])
    def telemetry(after: int = 0, device_id: str | None = None, limit: int = 100,
                  t: ApiToken = Depends(operator("read_telemetry"))) -> dict[str, Any]:  # noqa: B008
        """Stored readings after id ``after`` (poll with the returned ``next``)."""
        if device_id is not None:
            authorize_operator(policy, t.name, t.role, "read_telemetry", "Device", device_id)
        rows = store.readings_after(after, device_id=device_id, limit=max(1, min(limit, 1000)))
        items = []
        for r in rows:
            try:
                reading: dict[str, Any] = decode_reading(r.body).to_dict()
            except IotGuardError:
                reading = {"raw": base64.b64encode(r.body).decode()}
            items.append({"id": r.id, "device_id": r.device_id, "epoch": r.epoch, "seq": r.seq,
                          "received_at": r.received_at.isoformat(), **reading})
        return {"items": items, "next": rows[-1].id if rows else after}

    @app.get("/v1/stats", tags=["telemetry"])
    def hub_stats(_t: ApiToken = Depends(operator("view_alerts"))) -> dict[str, Any]:  # noqa: B008
        """Ingest counters and latency percentiles since this hub started."""
        return {**stats.snapshot(), "latency_ms": stats.latency_percentiles(),
                "rejected_total": store.rejection_totals()}

    app.include_router(make_audit_router(audit, operator("view_audit")))
    return app
