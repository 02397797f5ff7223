"""Operators: API tokens, their authentication with attempt limits, the one-time bootstrap.

Every operator request is authenticated here and then decided by Cedar with
the token's role as the principal's role. Attempt limits (per client address
and per token, in the database so they hold across hub processes) come from
the device plane's limiter: a valid credential passes an address lockout.
"""

from __future__ import annotations

from dataclasses import dataclass

from iotguard.audit import AuditEvent, AuditSink, EventType
from iotguard.clock import Clock
from iotguard.errors import AuthenticationError, IotGuardError
from iotguard.hub.credentials import record_use, redeem_bootstrap
from iotguard.hub.device_plane import DevicePlane
from iotguard.hub.store import ApiToken, HubStore
from iotguard.policy import PolicyEngine, authorize_operator

__all__ = ["OperatorService"]


@dataclass
class OperatorService:
    """Operator authentication and authorization.

    Args:
        store: Holds the API tokens.
        engine: The Cedar policy engine.
        audit: Where failed attempts and the bootstrap are logged.
        clock: Time source.
        plane: Attempt limits shared with the device plane.
    """

    store: HubStore
    engine: PolicyEngine
    audit: AuditSink
    clock: Clock
    plane: DevicePlane

    def authenticate(self, secret: str, client_addr: str, path: str) -> ApiToken:
        """Check a bearer token, within the attempt limits.

        Raises:
            LockedOut: too many attempts from this address or for this token.
            AuthenticationError: unknown, malformed or revoked token.
        """
        attempt = self.plane.attempt("api", client_addr)
        token_id = secret.split("_")[1][:32] if secret.count("_") >= 2 else "-"
        attempt.credential(("api-token", token_id))
        try:
            token = self.store.authenticate_api_token(secret)
        except AuthenticationError:
            self.audit.record(AuditEvent(EventType.AUTH_FAILED, attempt.now, "api", "api",
                                         {"what": "api_token", "path": path[:128]}))
            attempt.failed()
            raise
        attempt.succeeded()
        record_use(self.store, token.token_id, attempt.now)
        return token

    def authorize(self, token: ApiToken, action: str, resource_type: str = "Hub", resource_id: str = "hub") -> None:
        """Cedar decides the operator's request.

        Raises:
            PolicyDenied: the policy does not allow it.
        """
        authorize_operator(self.engine, token.name, token.role, action, resource_type, resource_id)

    def bootstrap(self, secret: str, name: str, client_addr: str) -> str:
        """Trade the one-time bootstrap secret for the first security-admin token (a Cedar ``bootstrap`` decision).

        Raises:
            LockedOut, AuthenticationError, PolicyDenied, ConfigError.
        """
        attempt = self.plane.attempt("bootstrap", client_addr)
        authorize_operator(self.engine, name, "bootstrap", "bootstrap", "Hub", "hub", now=attempt.now)
        try:
            token = redeem_bootstrap(self.store, secret, name, attempt.now)
        except IotGuardError:
            self.audit.record(AuditEvent(EventType.AUTH_FAILED, attempt.now, "api", "api", {"what": "bootstrap"}))
            attempt.failed()
            raise
        self.audit.record(AuditEvent("operator.bootstrapped", attempt.now, name, "api", {"role": "security-admin"}))
        return token
