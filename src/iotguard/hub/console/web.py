"""The console application: server-rendered pages mounted on the hub's HTTPS API at ``/console``.

Security properties every page shares (ADR 1400):

- a session cookie (``HttpOnly``, ``Secure``, ``SameSite=Strict``, path
  ``/console``) from an API token or a device owner's access token, checked
  on every request, and a Cedar decision per page and action through the
  API's own :meth:`OperatorService.authorize`;
- a CSRF token in every state-changing form (and a double-submit token on
  the login forms, against login CSRF);
- a strict Content-Security-Policy: scripts and styles only from
  ``/console/static`` (vendored, no inline script or style), no framing;
- forms parsed here with a size limit; errors map to pages through the
  API's status table and never show internals.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from iotguard import __version__
from iotguard.errors import IotGuardError, MalformedError, public_message
from iotguard.hub.compose import HubServices
from iotguard.hub.console.auth import ConsoleAuth
from iotguard.hub.console.views import ConsoleViews
from iotguard.hub.stores.console import ConsoleSession, SqlConsoleSessionStore

__all__ = ["CONSOLE_PREFIX", "CONTENT_SECURITY_POLICY", "COOKIE", "Console", "create_console_app"]

log = logging.getLogger(__name__)

#: Where the console is mounted on the hub's API.
CONSOLE_PREFIX = "/console"
#: The session cookie.
COOKIE = "iotguard_console"
#: The login forms' double-submit cookie.
LOGIN_COOKIE = "iotguard_console_login"
#: Largest form body the console reads.
MAX_FORM_BYTES = 8192
#: Every console response carries this policy: nothing inline, nothing from elsewhere, no framing.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _package_dir(name: str) -> Path:
    return Path(str(files("iotguard.hub.console").joinpath(name)))


class Console:
    """Renders pages and holds what every console route needs: the session, the CSRF check, the form parser.

    Args:
        auth: Sessions and Cedar decisions.
        views: What each page shows.
        http_status: The API's reason-code-to-status table.
    """

    def __init__(self, auth: ConsoleAuth, views: ConsoleViews, http_status: Mapping[str, int]) -> None:
        self.auth = auth
        self.views = views
        self.http_status = http_status
        self.env = Environment(loader=FileSystemLoader(_package_dir("templates")),
                               autoescape=select_autoescape(default=True, default_for_string=True),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.globals["version"] = __version__
        self.env.globals["prefix"] = CONSOLE_PREFIX

    def render(self, template: str, request: Request, *, status: int = 200,
               session: ConsoleSession | None = None, **context: Any) -> HTMLResponse:
        """A page, with the session (for the menu and the CSRF field) in its context."""
        html = self.env.get_template(template).render(request=request, session=session, **context)
        return HTMLResponse(html, status_code=status)

    def session(self, request: Request, action: str, resource_type: str = "Hub",
                resource_id: str = "hub") -> ConsoleSession:
        """The request's session, allowed by Cedar to do ``action`` on the resource.

        Raises:
            AuthenticationError: no valid session.
            PolicyDenied: the policy does not allow it.
        """
        session = self.auth.resolve(request.cookies.get(COOKIE))
        request.state.console_session = session
        self.auth.authorize(session, action, resource_type, resource_id)
        return session

    async def form(self, request: Request) -> dict[str, str]:
        """The url-encoded form of a POST, each field once, within :data:`MAX_FORM_BYTES`.

        Raises:
            MalformedError: too large, not url-encoded, or a field given twice.
        """
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise MalformedError("form must be application/x-www-form-urlencoded")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise MalformedError("form too large")
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                              max_num_fields=32)
        except (UnicodeDecodeError, ValueError):
            raise MalformedError("form is not url-encoded") from None
        if any(len(v) != 1 for v in parsed.values()):
            raise MalformedError("a form field was given twice")
        return {k: v[0] for k, v in parsed.items()}

    async def action(self, request: Request, action: str, resource_type: str = "Hub",
                     resource_id: str = "hub") -> tuple[ConsoleSession, dict[str, str]]:
        """A state-changing request: session, Cedar decision, then the form with its CSRF token checked.

        Raises:
            AuthenticationError, PolicyDenied, MalformedError.
        """
        session = self.session(request, action, resource_type, resource_id)
        form = await self.form(request)
        self.auth.check_csrf(session, form.get("csrf"))
        return session, form

    def login_page(self, request: Request, template: str, *, status: int = 200, error: str = "",
                   next_url: str = "") -> HTMLResponse:
        """A login form with a fresh double-submit token in a cookie and a hidden field."""
        token = secrets.token_urlsafe(24)
        response = self.render(template, request, status=status, login_csrf=token, error=error,
                               next_url=next_url)
        response.set_cookie(LOGIN_COOKIE, token, max_age=600, path=CONSOLE_PREFIX, secure=True, httponly=True,
                            samesite="strict")
        return response

    @staticmethod
    def check_login_csrf(request: Request, form: Mapping[str, str]) -> None:
        """The login form's hidden token must equal its cookie (an attacker's page cannot set the cookie).

        Raises:
            MalformedError: missing or different.
        """
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        submitted = form.get("login_csrf", "")
        if not cookie or not secrets.compare_digest(cookie.encode(), submitted.encode()):
            raise MalformedError("missing or wrong login CSRF token")

    @staticmethod
    def start_session(response: Response, cookie: str) -> None:
        response.set_cookie(COOKIE, cookie, path=CONSOLE_PREFIX, secure=True, httponly=True, samesite="strict")
        response.delete_cookie(LOGIN_COOKIE, path=CONSOLE_PREFIX, secure=True, httponly=True, samesite="strict")

    @staticmethod
    def end_session(response: Response) -> None:
        response.delete_cookie(COOKIE, path=CONSOLE_PREFIX, secure=True, httponly=True, samesite="strict")


def safe_next(value: str, default: str) -> str:
    """A post-login redirect target inside the console only (no open redirect)."""
    if value.startswith(CONSOLE_PREFIX + "/") and "//" not in value and "\\" not in value and len(value) < 512:
        return value
    return default


def create_console_app(services: HubServices, *, http_status: Mapping[str, int],
                       drain: Callable[[], int] | None = None) -> FastAPI:
    """The console as an application to mount at :data:`CONSOLE_PREFIX` on the hub's API.

    Args:
        services: The hub's services (the console adds none of its own logic).
        http_status: The API's reason-code-to-status table.
        drain: Delivers outbox rows after each state-changing request, as the API does (None when the app
            the console is mounted on already does it, as :func:`~iotguard.hub.api.create_app` does).
    """
    from iotguard.hub.console.owner import owner_routes
    from iotguard.hub.console.pages import operator_routes

    auth = ConsoleAuth(SqlConsoleSessionStore(services.store.engine), services.operators, services.store,
                       services.plane, services.operators.audit, services.clock)
    console = Console(auth, ConsoleViews(services), http_status)
    app = FastAPI(title="iotguard console", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.console = console

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if drain is not None and (request.method == "POST" or response.status_code >= 400):
            try:
                await run_in_threadpool(drain)
            except Exception as exc:  # committed; the maintenance tick delivers the effects
                log.warning("outbox delivery after console %s deferred: %s", request.url.path, type(exc).__name__)
        for name, value in _SECURITY_HEADERS.items():
            if name == "Cache-Control" and request.url.path.startswith(CONSOLE_PREFIX + "/static/"):
                continue
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(IotGuardError)
    async def _error(request: Request, exc: IotGuardError) -> HTMLResponse:
        status = http_status.get(exc.code, 500)
        if status >= 500:
            log.error("console %s failed: %s", request.url.path, exc.code)
        if status == 401 or exc.code in ("unauthenticated", "locked_out"):
            template = "owner_login.html" if request.url.path.startswith(CONSOLE_PREFIX + "/owner") else "login.html"
            response = console.login_page(request, template, status=status, error=public_message(exc.code),
                                          next_url=request.url.path if request.method == "GET" else "")
            console.end_session(response)
            return response
        return console.render("error.html", request, status=status, code=exc.code, message=public_message(exc.code),
                              session=getattr(request.state, "console_session", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        return console.render("error.html", request, status=400, code="malformed", message=public_message("malformed"),
                              session=getattr(request.state, "console_session", None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        code = "not_found" if exc.status_code == 404 else "error"
        return console.render("error.html", request, status=exc.status_code, code=code,
                              message="Not found." if exc.status_code == 404 else "The request failed.")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(CONSOLE_PREFIX + "/fleet", status_code=303)

    app.mount("/static", StaticFiles(directory=_package_dir("static")), name="static")
    app.include_router(operator_routes(console))
    app.include_router(owner_routes(console))
    return app
