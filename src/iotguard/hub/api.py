"""REST API (FastAPI; OpenAPI at ``/openapi.json`` only when ``hub.api_docs`` is on), one router per capability.

Every route but ``/health`` is authenticated and decided by Cedar: operators
with a bearer token created by ``iotguard tokens create``; devices through
the one device plane (:mod:`iotguard.hub.device_plane`): their enrollment
token and proof of possession (``/v1/enroll``) or a signed device request.
Errors are mapped from reason codes to HTTP status and a public message
through :data:`HTTP_STATUS`; internals never reach clients.
The routers live in :mod:`iotguard.hub.routers`; they only translate HTTP to
service calls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge

from iotguard import __version__
from iotguard.errors import IotGuardError, public_message
from iotguard.hub.audit_api import make_audit_router
from iotguard.hub.console import CONSOLE_PREFIX, create_console_app
from iotguard.hub.ratelimit import LockedOut
from iotguard.hub.request_log import request_id_middleware
from iotguard.hub.routers.aggregation import aggregation_router
from iotguard.hub.routers.alerts import alerts_router
from iotguard.hub.routers.analytics import analytics_router
from iotguard.hub.routers.attestation import attestation_router
from iotguard.hub.routers.auth import OperatorAuth
from iotguard.hub.routers.device_requests import device_requests_router
from iotguard.hub.routers.devices import devices_router
from iotguard.hub.routers.firmware import firmware_router
from iotguard.hub.routers.health import health_router
from iotguard.hub.routers.learning import learning_router
from iotguard.hub.routers.operators import operators_router
from iotguard.hub.routers.privacy import privacy_router
from iotguard.hub.routers.sensing import sensing_router
from iotguard.hub.routers.telemetry import telemetry_router
from iotguard.hub.subsystem_metrics import register_subsystem_metrics
from iotguard.hub.tracing import tracer_from_config

if TYPE_CHECKING:  # the composition root imports this module's callers, not the other way round
    from iotguard.hub.compose import HubServices

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
    "update_refused": 422,
    "update_not_found": 404,
    "update_wrong_model": 422,
    "no_consent": 403,
    "budget_exhausted": 429,
    "bad_proof": 422,
    "storage_error": 503,
    "detector_state_conflict": 503,  # other hub processes kept writing the device's state: retry (ADR 0751)
    "detector_state_missing": 503,
    "detector_state_too_large": 503,
    "detector_state_bad_key": 503,
    "attestation_key_mismatch": 401,
    "no_appraisal_policy": 409,
    "unknown_alert": 404,
    # federated learning (docs/learning.md)
    "update_malformed": 400,
    "update_dims": 400,
    "update_not_finite": 400,
    "update_norm_exceeded": 422,
    "update_stale": 409,
    "update_duplicate": 409,
    "parameters_shape": 400,
    "parameters_not_finite": 400,
    "not_eligible": 403,
    "run_not_running": 409,
    "unknown_run": 404,
    "unknown_model": 404,
    "artifact_malformed": 400,
    "unknown_rollout": 404,
    "rollout_state": 409,
    "attestation_key_not_certified": 403,
    "ak_certification_failed": 401,
    "no_endorsement_key": 409,
    "tpm_unsupported": 422,
    "ek_certificate_untrusted": 403,
    "ek_certificate_mismatch": 400,
    "ek_roots_not_configured": 409,
    # federated learning, secure rounds: normal answers, not failures (docs/learning.md)
    "not_selected": 409,
    "too_few_participants": 409,
    "secure_only": 409,
    "compression_mismatch": 409,
    "compression_unsupported": 409,
    "ek_certificate_revoked": 403,
    "ek_crl_invalid": 409,
    "ek_crl_stale": 409,
    # secure-aggregation refusals that say where the round is (analytics.secagg.ROUND_STATE_REASONS)
    "wrong_phase": 409,
    "round_unknown": 404,
    "message_duplicate": 409,
    "not_in_round": 403,
}


def create_app(services: HubServices, *, drain: Callable[[], int] | None = None) -> FastAPI:
    """Build the hub's FastAPI application from its services.

    One router per capability; every operator route authenticates through
    :class:`~iotguard.hub.routers.auth.OperatorAuth` and is decided by Cedar
    (the token's role is the principal's role, the route names the action
    and the resource). Errors map through :data:`HTTP_STATUS`.

    Args:
        services: The hub's services.
        drain: Delivers outbox rows; called after every state-changing or
            refused request so its side effects (audit entries, broker
            access, consent pushes) happen before the response.
    """
    api_docs = services.cfg.api_docs
    app = FastAPI(title="iotguard hub", version=__version__,
                  description="Device registry, enrollment, telemetry and operations API.",
                  openapi_url="/openapi.json" if api_docs else None,
                  docs_url="/docs" if api_docs else None, redoc_url="/redoc" if api_docs else None)
    if api_docs:
        log.warning("hub.api_docs is on: /docs, /redoc and /openapi.json answer without authentication")
    app.state.device_plane = services.plane
    metrics_registry = CollectorRegistry()
    api_requests = Counter("iotguard_api_requests", "API requests", ["route", "status"],
                           registry=metrics_registry)
    Gauge("iotguard_info", "Hub version", ["version"], registry=metrics_registry).labels(__version__).set(1)
    operator = OperatorAuth(services.operators)

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

    if drain is not None:
        deliver = drain

        @app.middleware("http")
        async def _deliver_outbox(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            response = await call_next(request)
            # A change, or a refusal (its audit event), queued side effects: deliver them before answering.
            if request.method not in ("GET", "HEAD", "OPTIONS") or response.status_code >= 400:
                try:
                    await run_in_threadpool(deliver)
                except Exception as exc:  # the change is committed; the maintenance tick delivers its effects
                    log.warning("outbox delivery after %s deferred: %s", request.url.path, type(exc).__name__)
            return response

    app.include_router(health_router(services.processor.stats, services.outbox.pending, metrics_registry, operator))
    app.include_router(device_requests_router(services.lifecycle, services.plane))
    app.include_router(operators_router(services.operators))
    app.include_router(devices_router(services.lifecycle, services.posture, services.telemetry,
                                      services.operators, operator))
    app.include_router(attestation_router(services.attestation, services.plane, operator))
    app.include_router(privacy_router(services.consent, services.plane, operator, services.data_access))
    app.include_router(telemetry_router(services.telemetry, services.data_access, operator))
    app.include_router(make_audit_router(services.audit.log, operator("view_audit")))
    app.include_router(alerts_router(services.detection, services.operators, operator, metrics_registry))
    register_subsystem_metrics(metrics_registry, services)
    if services.analytics is not None:
        app.include_router(analytics_router(services.analytics, operator))
    if services.aggregation is not None:
        app.include_router(aggregation_router(services.aggregation, services.plane, operator))
    app.include_router(learning_router(services.learning, services.models, services.plane))
    app.include_router(firmware_router(services.firmware, services.rollouts, services.plane, operator))
    app.include_router(sensing_router(services.flows, services.health, services.plane))
    # The console's changes are delivered by this app's outbox middleware, which wraps the mount too.
    app.mount(CONSOLE_PREFIX, create_console_app(services, http_status=HTTP_STATUS))
    tracer = tracer_from_config(services.cfg.otel_traces_file)
    if tracer is not None:  # inside the request-id middleware, so each span carries the request's id
        app.state.tracer = tracer
        app.middleware("http")(tracer.middleware)
    app.middleware("http")(request_id_middleware)  # added last: the outermost, so it times everything
    return app
