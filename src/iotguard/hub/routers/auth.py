"""The operator authenticator: one FastAPI dependency for every operator route."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from iotguard.errors import AuthenticationError
from iotguard.hub.device_plane import client_address
from iotguard.hub.services.operators import OperatorService
from iotguard.hub.store import ApiToken

__all__ = ["OperatorAuth", "client_addr"]

_bearer = HTTPBearer(auto_error=False)


def client_addr(request: Request) -> str:
    """The peer address of a request ("unknown" when the transport has none)."""
    return client_address(request)


class OperatorAuth:
    """Builds dependencies that authenticate the bearer token and let Cedar decide the request."""

    def __init__(self, operators: OperatorService) -> None:
        self.operators = operators

    def __call__(self, action: str | None, resource_type: str = "Hub",
                 path_param: str | None = None) -> Callable[..., ApiToken]:
        """Dependency: authenticate, then (unless ``action`` is None) decide ``action`` on the resource."""
        operators = self.operators

        def dep(request: Request,
                creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> ApiToken:  # noqa: B008
            if creds is None or creds.scheme.lower() != "bearer":
                raise AuthenticationError("bearer token required")
            token = operators.authenticate(creds.credentials, client_addr(request), request.url.path)
            if action is not None:
                resource_id = str(request.path_params[path_param]) if path_param else "hub"
                operators.authorize(token, action, resource_type, resource_id)
            return token

        return dep
