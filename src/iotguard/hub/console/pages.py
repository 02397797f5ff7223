"""Operator pages: login, fleet, device, quarantine/release, alerts and approvals, rollouts, audit, privacy,
live rates.

Routes only translate HTTP to :class:`~iotguard.hub.console.views.ConsoleViews`
calls; each asks Cedar first with the same action the equivalent API route
uses (``view_devices``, ``quarantine``, ``release``, ``view_alerts`` plus the
approved action's own permission, ``publish_firmware`` for rollout moves,
``view_audit``, ``manage_consent``, ``read_telemetry``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from iotguard.errors import MalformedError, PolicyDenied
from iotguard.hub.console.fleet_view import DEVICE_STATUSES, FleetFilter
from iotguard.hub.console.web import CONSOLE_PREFIX, COOKIE, Console, safe_next
from iotguard.hub.routers.alerts import APPROVAL_ACTIONS
from iotguard.hub.routers.auth import client_addr
from iotguard.policy.model import TRUST_TIERS

__all__ = ["operator_routes"]

_MAX_REASON = 256
#: Operator moves on a rollout campaign and the word the page confirms them with.
_ROLLOUT_MOVES = {"pause": "paused", "resume": "resumed", "abort": "aborted"}


def _int(value: str | None, default: int) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or len(value) > 9:
        raise MalformedError("not a number")
    return int(value)


def _fleet_filter(params: Any) -> FleetFilter:
    quarantined = params.get("quarantined", "")
    if quarantined not in ("", "yes", "no"):
        raise MalformedError("quarantined must be yes or no")
    return FleetFilter(query=params.get("q", "").strip(), status=params.get("status", ""),
                       trust_tier=params.get("tier", ""),
                       quarantined=None if not quarantined else quarantined == "yes",
                       after=params.get("after", ""), before=params.get("before", ""),
                       page_size=_int(params.get("size"), 50))


def operator_routes(console: Console) -> APIRouter:
    """The operator console's routes (mounted under ``/console``)."""
    router = APIRouter()
    views = console.views

    @router.get("/login")
    def login_form(request: Request, next: str = "") -> HTMLResponse:
        return console.login_page(request, "login.html", next_url=safe_next(next, ""))

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await console.form(request)
        console.check_login_csrf(request, form)
        grant = console.auth.login_operator(form.get("token", "").strip(), client_addr(request))
        response = RedirectResponse(safe_next(form.get("next", ""), CONSOLE_PREFIX + "/fleet"), status_code=303)
        console.start_session(response, grant.cookie)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        session = console.auth.resolve(request.cookies.get(COOKIE))
        form = await console.form(request)
        console.auth.check_csrf(session, form.get("csrf"))
        console.auth.logout(request.cookies.get(COOKIE))
        target = CONSOLE_PREFIX + ("/owner/login" if session.subject_id else "/login")
        response = RedirectResponse(target, status_code=303)
        console.end_session(response)
        return response

    @router.get("/fleet")
    def fleet(request: Request) -> HTMLResponse:
        session = console.session(request, "view_devices")
        f = _fleet_filter(request.query_params)
        page, counts = views.fleet(f)
        return console.render("fleet.html", request, session=session, page=page, counts=counts, f=f,
                              statuses=DEVICE_STATUSES, tiers=sorted(TRUST_TIERS))

    @router.get("/devices/{device_id}")
    def device(request: Request, device_id: str) -> HTMLResponse:
        session = console.session(request, "view_devices", "Device", device_id)
        d = views.device(device_id)
        purpose = request.query_params.get("purpose", "")
        # Reading raw readings is purpose-bound: a Cedar read_telemetry decision with the purpose, audited;
        # a refusal is a 403 page (PolicyDenied), never the data.
        readings = views.readings(session.principal, session.role, device_id, purpose) if purpose else None
        return console.render("device.html", request, session=session, d=d, purpose=purpose, shown=readings,
                              purposes=views.readable_purposes(session.principal, session.role, device_id),
                              notice=request.query_params.get("done", ""))

    @router.post("/devices/{device_id}/quarantine")
    async def quarantine(request: Request, device_id: str) -> Response:
        session, form = await console.action(request, "quarantine", "Device", device_id)
        views.quarantine(device_id, actor=session.principal, reason=form.get("reason", "")[:_MAX_REASON])
        return RedirectResponse(f"{CONSOLE_PREFIX}/devices/{device_id}?done=quarantined", status_code=303)

    @router.post("/devices/{device_id}/release")
    async def release(request: Request, device_id: str) -> Response:
        session, form = await console.action(request, "release", "Device", device_id)
        views.release(device_id, actor=session.principal, reason=form.get("reason", "")[:_MAX_REASON])
        return RedirectResponse(f"{CONSOLE_PREFIX}/devices/{device_id}?done=released", status_code=303)

    @router.get("/alerts")
    def alerts(request: Request) -> HTMLResponse:
        session = console.session(request, "view_alerts")
        return console.render("alerts.html", request, session=session, **views.alerts(),
                              notice=request.query_params.get("done", ""))

    @router.post("/actions/{action_id}/approve")
    async def approve(request: Request, action_id: int) -> Response:
        session, _form = await console.action(request, "view_alerts")
        pending = console.views.s.detection.pending(action_id)
        console.auth.authorize(session, APPROVAL_ACTIONS[pending.kind], "Device", pending.device_id)
        console.views.s.detection.approve(action_id, session.principal)
        return RedirectResponse(f"{CONSOLE_PREFIX}/alerts?done=approved-{action_id}", status_code=303)

    @router.get("/rollouts")
    def rollouts(request: Request) -> HTMLResponse:
        session = console.session(request, "view_devices")  # as GET /v1/rollouts
        campaigns = views.rollouts()
        movable = set()
        for r in campaigns:  # the moves are offered only where Cedar would allow them
            try:
                console.auth.authorize(session, "publish_firmware", "Firmware", r["c"].rollout_id)
            except PolicyDenied:
                continue
            movable.add(r["c"].rollout_id)
        return console.render("rollouts.html", request, session=session, campaigns=campaigns, movable=movable,
                              notice=request.query_params.get("done", ""))

    @router.post("/rollouts/{rollout_id}/{move}")
    async def rollout_move(request: Request, rollout_id: str, move: str) -> Response:
        # As POST /v1/rollouts/{id}/pause|resume|abort: publish_firmware on the campaign.
        session, form = await console.action(request, "publish_firmware", "Firmware", rollout_id)
        if move not in _ROLLOUT_MOVES:
            raise MalformedError("unknown rollout move")
        reason = form.get("reason", "").strip()[:_MAX_REASON] or "operator"
        if move == "pause":
            views.s.rollouts.pause(rollout_id, actor=session.principal, reason=reason)
        elif move == "resume":
            views.s.rollouts.resume(rollout_id, actor=session.principal)
        else:
            views.s.rollouts.abort(rollout_id, actor=session.principal, reason=reason)
        return RedirectResponse(f"{CONSOLE_PREFIX}/rollouts?done={_ROLLOUT_MOVES[move]}-{rollout_id}",
                                status_code=303)

    @router.get("/audit")
    def audit(request: Request) -> HTMLResponse:
        session = console.session(request, "view_audit")
        return console.render("audit.html", request, session=session, a=views.audit(), verification=None)

    @router.post("/audit/verify")
    async def verify(request: Request) -> HTMLResponse:
        session, _form = await console.action(request, "view_audit")
        result = views.verify_audit()
        return console.render("audit.html", request, session=session, a=views.audit(), verification=result,
                              status=200 if result.ok else 409)

    @router.get("/policy")
    def policy(request: Request) -> HTMLResponse:
        session = console.session(request, "manage_policy")
        params = request.query_params
        old, new = params.get("old"), params.get("new")
        diff = (_int(old, 0), _int(new, 0)) if old and new else (None, None)
        return console.render("policy.html", request, session=session, p=views.policy(*diff), explanation=None,
                              q=params)

    @router.get("/policy/explain")
    def explain(request: Request) -> HTMLResponse:
        session = console.session(request, "manage_policy")
        q = request.query_params
        explanation = views.explain(q.get("principal_type", ""), q.get("principal_id", "").strip(),
                                    q.get("role", "").strip(), q.get("action", "").strip(),
                                    q.get("resource_type", "").strip(), q.get("resource_id", "").strip())
        return console.render("policy.html", request, session=session, p=views.policy(), explanation=explanation,
                              q=q)

    @router.get("/privacy")
    def privacy(request: Request) -> HTMLResponse:
        session = console.session(request, "manage_consent")
        subject_id = request.query_params.get("subject", "").strip()[:128]
        return console.render("privacy.html", request, session=session,
                              subject=views.subject(subject_id) if subject_id else None, issued=None)

    @router.post("/privacy/owner-token")
    async def owner_token(request: Request) -> HTMLResponse:
        session, form = await console.action(request, "manage_consent")
        subject_id = form.get("subject", "").strip()
        issued = console.auth.issue_owner_token(subject_id, actor=session.principal)
        return console.render("privacy.html", request, session=session, subject=views.subject(subject_id),
                              issued=issued)

    @router.get("/live")
    def live(request: Request) -> HTMLResponse:
        session = console.session(request, "view_alerts")  # as GET /v1/stats: rates, never readings
        return console.render("live.html", request, session=session, rates=views.rates())

    @router.get("/live/table")
    def live_table(request: Request) -> HTMLResponse:
        session = console.session(request, "view_alerts")  # as GET /v1/stats: rates, never readings
        return console.render("_rates_table.html", request, session=session, rates=views.rates())

    @router.get("/live/rates")
    def live_rates(request: Request) -> JSONResponse:
        console.session(request, "view_alerts")  # as GET /v1/stats: rates, never readings
        return JSONResponse(views.rates())

    return router
