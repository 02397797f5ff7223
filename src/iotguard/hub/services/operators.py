"""Operators: API tokens, their authentication with attempt limits, the one-time bootstrap.

Every operator request is authenticated here and then decided by Cedar with
the token's role as the principal's role. Failed attempts are limited per
client address (sized for gateways and NATs) and per token id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from iotguard.audit import AuditEvent, AuditSink, EventType
from iotguard.clock import Clock
from iotguard.errors import AuthenticationError, IotGuardError
from iotguard.hub.credentials import record_use, redeem_bootstrap
from iotguard.hub.ratelimit import AttemptLimiter, AttemptLimits
from iotguard.hub.store import ApiToken, HubStore
from iotguard.policy import PolicyEngine, authorize_operator

__all__ = ["ADDRESS_LIMITS", "OperatorService"]

#: Per client address: a gateway may enroll many devices, a guesser still locks out after 10 failures.
ADDRESS_LIMITS = AttemptLimits(rate_per_s=50.0, burst=500, max_failures=10)

_T = TypeVar("_T")


@dataclass
class OperatorService:
    """Operator authentication and authorization.

    Args:
        store: Holds the API tokens.
        engine: The Cedar policy engine.
        audit: Where failed attempts and the bootstrap are logged.
        clock: Time source.
        limiter: Attempt limits per token and per device.
        address_limiter: Attempt limits per client address.
    """

    store: HubStore
    engine: PolicyEngine
    audit: AuditSink
    clock: Clock
    limiter: AttemptLimiter
    address_limiter: AttemptLimiter

    def limiter_for(self, key: tuple[str, str]) -> AttemptLimiter:
        """A client address may be a gateway or NAT enrolling a whole fleet: it gets a larger bucket."""
        return self.address_limiter if key[0].endswith("-addr") else self.limiter

    def attempt(self, keys: Sequence[tuple[str, str]], action: Callable[[], _T]) -> _T:
        """Run ``action`` within the attempt limits of ``keys`` (e.g. client address and device id).

        Raises:
            LockedOut: too many attempts for one of the keys.
            IotGuardError: whatever ``action`` raises (counted as a failure).
        """
        now = self.clock.now()
        for key in keys:
            self.limiter_for(key).check(key, now)
        try:
            result = action()
        except IotGuardError:
            for key in keys:
                self.limiter_for(key).record_failure(key, now)
            raise
        for key in keys:
            self.limiter_for(key).record_success(key, now)
        return result

    def authenticate(self, secret: str, client_addr: str, path: str) -> ApiToken:
        """Check a bearer token, within the attempt limits.

        Raises:
            LockedOut: too many attempts from this address or for this token.
            AuthenticationError: unknown, malformed or revoked token.
        """
        now = self.clock.now()
        keys = [("api-addr", client_addr),
                ("api-token", secret.split("_")[1][:32] if secret.count("_") >= 2 else "-")]
        for key in keys:
            self.limiter_for(key).check(key, now)
        try:
            token = self.store.authenticate_api_token(secret)
        except AuthenticationError:
            for key in keys:
                self.limiter_for(key).record_failure(key, now)
            self.audit.record(AuditEvent(EventType.AUTH_FAILED, now, "api", "api",
                                         {"what": "api_token", "path": path[:128]}))
            raise
        for key in keys:
            self.limiter_for(key).record_success(key, now)
        record_use(self.store, token.token_id, now)
        return token

    def authorize(self, token: ApiToken, action: str, resource_type: str = "Hub", resource_id: str = "hub") -> None:
        """Cedar decides the operator's request.

        Raises:
            PolicyDenied: the policy does not allow it.
        """
        authorize_operator(self.engine, token.name, token.role, action, resource_type, resource_id)

    def bootstrap(self, secret: str, name: str, client_addr: str) -> str:
        """Trade the one-time bootstrap secret for the first security-admin token.

        Raises:
            LockedOut, AuthenticationError, ConfigError.
        """
        now = self.clock.now()
        key = ("bootstrap-addr", client_addr)
        self.limiter_for(key).check(key, now)
        try:
            token = redeem_bootstrap(self.store, secret, name, now)
        except IotGuardError:
            self.limiter_for(key).record_failure(key, now)
            self.audit.record(AuditEvent(EventType.AUTH_FAILED, now, "api", "api", {"what": "bootstrap"}))
            raise
        self.audit.record(AuditEvent("operator.bootstrapped", now, name, "api", {"role": "security-admin"}))
        return token
