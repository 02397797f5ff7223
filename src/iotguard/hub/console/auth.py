"""The console's authentication: API token or owner access token in, short-lived session out.

Operators log in with an API token through :meth:`OperatorService.authenticate`
(the API's attempt limits and audit of failures); the session keeps the
token's id and role, and every request re-checks that the token is still
active, so revoking a token ends its console sessions. Every page and action
is then decided by Cedar through :meth:`OperatorService.authorize`, exactly
as the API decides its routes.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from iotguard.audit import AuditEvent, AuditSink, EventType
from iotguard.clock import Clock
from iotguard.errors import AuthenticationError, MalformedError
from iotguard.hub.device_plane import DevicePlane
from iotguard.hub.services.operators import OperatorService
from iotguard.hub.store import ApiToken, HubStore
from iotguard.hub.stores.console import (
    SESSION_TTL,
    SUBJECT_ROLE,
    SUBJECT_TOKEN_TTL,
    ConsoleSession,
    ConsoleSessionStore,
    new_secret,
    secret_digest,
)
from iotguard.policy.topics import check_identifier

__all__ = ["ConsoleAuth", "SessionGrant"]


@dataclass(frozen=True)
class SessionGrant:
    """A new session: the cookie secret (given to the browser once) and the session."""

    cookie: str
    session: ConsoleSession


class ConsoleAuth:
    """Console logins, sessions and the Cedar principal of each session.

    Args:
        sessions: Where sessions and owner access tokens live.
        operators: API token authentication and Cedar authorization (the API's).
        tokens: Re-checks that a session's API token is still active.
        plane: Attempt limits for owner logins (the device plane's limiter).
        audit: Where owner logins, failures and issued access tokens are logged.
        clock: Time source.
    """

    def __init__(self, sessions: ConsoleSessionStore, operators: OperatorService, tokens: HubStore,
                 plane: DevicePlane, audit: AuditSink, clock: Clock) -> None:
        self.sessions = sessions
        self.operators = operators
        self.tokens = tokens
        self.plane = plane
        self.audit = audit
        self.clock = clock

    def _open(self, principal: str, role: str, *, token_id: str | None, subject_id: str | None) -> SessionGrant:
        now = self.clock.now()
        self.sessions.purge_expired(now)  # each login sweeps the ended sessions (any hub process)
        cookie = new_secret("igs")
        session = ConsoleSession(principal, role, token_id, subject_id, secrets.token_urlsafe(32), now,
                                 now + SESSION_TTL)
        self.sessions.put_session(secret_digest(cookie, "session"), session)
        return SessionGrant(cookie, session)

    def login_operator(self, api_token: str, client_addr: str) -> SessionGrant:
        """Trade an API token for a session.

        Raises:
            LockedOut: too many attempts.
            AuthenticationError: unknown, malformed or revoked token.
        """
        token = self.operators.authenticate(api_token, client_addr, "/console/login")
        return self._open(token.name, token.role, token_id=token.token_id, subject_id=None)

    def issue_owner_token(self, subject_id: str, *, actor: str) -> str:
        """A per-subject access token for the device-owner portal (audited; shown once).

        Raises:
            ConfigError: ``subject_id`` is not a valid identifier.
        """
        check_identifier("subject id", subject_id)
        now = self.clock.now()
        secret = new_secret("igo")
        self.sessions.put_subject_token(secret_digest(secret, "owner"), subject_id, actor, now,
                                        now + SUBJECT_TOKEN_TTL)
        self.audit.record(AuditEvent("console.owner_token_issued", now, actor, "console",
                                     {"subject_id": subject_id}))
        return secret

    def login_owner(self, access_token: str, client_addr: str) -> SessionGrant:
        """Trade a device owner's access token for a session of role ``data-subject``.

        Raises:
            LockedOut: too many attempts.
            AuthenticationError: unknown, expired or revoked token.
        """
        attempt = self.plane.attempt("console-owner", client_addr)
        subject = None
        try:
            subject = self.sessions.subject_of_token(secret_digest(access_token, "owner"), attempt.now)
        except AuthenticationError:
            subject = None
        if subject is None:
            self.audit.record(AuditEvent(EventType.AUTH_FAILED, attempt.now, "console", "console",
                                         {"what": "owner_token"}))
            attempt.failed()
            raise AuthenticationError("invalid owner access token")
        attempt.succeeded()
        self.audit.record(AuditEvent("console.owner_login", attempt.now, f"subject:{subject}", "console", {}))
        return self._open(f"subject:{subject}", SUBJECT_ROLE, token_id=None, subject_id=subject)

    def end_owner_access(self, subject_id: str) -> int:
        """Revoke a subject's access tokens and end their sessions (after erasure); returns tokens revoked."""
        return self.sessions.revoke_subject_tokens(subject_id, self.clock.now())

    def resolve(self, cookie: str | None) -> ConsoleSession:
        """The session a request's cookie names.

        Raises:
            AuthenticationError: no cookie, unknown or expired session, or its API token was revoked.
        """
        if not cookie:
            raise AuthenticationError("console session required")
        digest = secret_digest(cookie, "session")
        session = self.sessions.session(digest, self.clock.now())
        if session is None:
            raise AuthenticationError("console session expired or unknown")
        if session.token_id is not None and self.tokens.active_api_token(session.token_id) is None:
            self.sessions.delete_session(digest)
            raise AuthenticationError("the session's API token was revoked")
        return session

    def logout(self, cookie: str | None) -> None:
        """End the session (an unknown cookie is no error)."""
        if cookie:
            try:
                self.sessions.delete_session(secret_digest(cookie, "session"))
            except AuthenticationError:
                return

    def authorize(self, session: ConsoleSession, action: str, resource_type: str = "Hub",
                  resource_id: str = "hub") -> None:
        """Cedar decides the session's request, with the API's own check.

        Raises:
            PolicyDenied: the policy does not allow it.
        """
        self.operators.authorize(ApiToken(session.token_id or "-", session.principal, session.role), action,
                                 resource_type, resource_id)

    @staticmethod
    def check_csrf(session: ConsoleSession, submitted: str | None) -> None:
        """A state-changing form must carry the session's CSRF token.

        Raises:
            MalformedError: missing or wrong token (``csrf``).
        """
        if not submitted or not hmac.compare_digest(submitted.encode(), session.csrf_token.encode()):
            raise MalformedError("missing or wrong CSRF token")
