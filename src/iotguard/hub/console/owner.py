"""The device-owner portal: a data subject sees what their devices collect, why and for how long,
grants or withdraws consent per purpose, downloads their data and erases it.

The session names the subject; no route takes a subject id from the request,
so an owner can only ever reach their own data. Each route is a Cedar
``own_data`` decision for the ``data-subject`` role, and each change goes
through :class:`~iotguard.hub.services.consent.ConsentService` (audited, and
a consent change is pushed to the subject's devices through the outbox).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from iotguard.errors import ConsentError, MalformedError
from iotguard.hub.console.web import CONSOLE_PREFIX, Console
from iotguard.hub.routers.auth import client_addr
from iotguard.hub.stores.console import ConsoleSession

__all__ = ["owner_routes"]


def _subject(session: ConsoleSession) -> str:
    if session.subject_id is None:
        raise ConsentError("this page is for device owners")
    return session.subject_id


def owner_routes(console: Console) -> APIRouter:
    """Routes under ``/console/owner``."""
    router = APIRouter(prefix="/owner")
    views = console.views
    consent = views.s.consent

    @router.get("/login")
    def owner_login_form(request: Request) -> HTMLResponse:
        return console.login_page(request, "owner_login.html")

    @router.post("/login")
    async def owner_login(request: Request) -> Response:
        form = await console.form(request)
        console.check_login_csrf(request, form)
        grant = console.auth.login_owner(form.get("token", "").strip(), client_addr(request))
        response = RedirectResponse(CONSOLE_PREFIX + "/owner", status_code=303)
        console.start_session(response, grant.cookie)
        return response

    @router.get("")
    def owner_home(request: Request) -> HTMLResponse:
        session = console.session(request, "own_data")
        return console.render("owner.html", request, session=session, o=views.owner(_subject(session)),
                              notice=request.query_params.get("done", ""))

    @router.post("/consent")
    async def owner_consent(request: Request) -> Response:
        session, form = await console.action(request, "own_data")
        subject = _subject(session)
        purpose, decision = form.get("purpose", ""), form.get("decision", "")
        if decision not in ("grant", "withdraw") or purpose not in views.owner_purposes(subject):
            raise MalformedError("unknown purpose or decision")
        consent.change(subject, purpose, decision == "grant", actor=session.principal)
        return RedirectResponse(f"{CONSOLE_PREFIX}/owner?done={decision}-{purpose}", status_code=303)

    @router.get("/export")
    def owner_export(request: Request) -> Response:
        session = console.session(request, "own_data")
        body = json.dumps(consent.export(_subject(session)), indent=2, sort_keys=True, default=str)
        return Response(body, media_type="application/json",
                        headers={"Content-Disposition": 'attachment; filename="my-iotguard-data.json"'})

    @router.post("/erase")
    async def owner_erase(request: Request) -> HTMLResponse:
        session, form = await console.action(request, "own_data")
        if form.get("confirm") != "yes":
            raise MalformedError("erasure needs confirmation")
        subject = _subject(session)
        record = consent.erase(subject, actor=session.principal)
        console.auth.end_owner_access(subject)
        return console.render("owner_erased.html", request, session=session, record=record.to_dict())

    return router
