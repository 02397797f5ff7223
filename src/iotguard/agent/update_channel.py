"""Firmware updates over the authenticated device channel.

Every repository file travels as a signed ``update_fetch`` device request
(HTTPS to the hub, verified against the pinned fleet CA; the hub's device
plane checks the signature, nonce and Cedar policy, then answers the bytes).
:class:`DeviceChannelFetcher` is the ``tuf.ngclient`` fetcher over it: it
streams, so python-tuf's length limits stop an endless answer early.
:class:`UpdateCheckIn` is the rollout side: the device says what it runs
and how its last install ended, the hub names the release to install.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

from iotguard.agent.firmware import FirmwareUpdateClient
from iotguard.errors import RollbackError, UpdateRefused

if TYPE_CHECKING:  # the runtime imports this package's modules; only its type is needed here
    from iotguard.agent.runtime import Agent

__all__ = [
    "CHECK_ROUTE",
    "FETCH_ROUTE",
    "REPOSITORY_URL",
    "DeviceChannelFetcher",
    "UpdateCheckIn",
    "UpdateRound",
    "device_update_channel",
    "update_round",
]

#: Hub route answering ``update_fetch`` requests.
FETCH_ROUTE = "/v1/firmware/fetch"
#: Hub route answering ``update_check`` requests.
CHECK_ROUTE = "/v1/firmware/check"
#: The repository's base URL as ngclient sees it (the fetcher maps it onto signed requests).
REPOSITORY_URL = "iotguard-device://firmware"
_CHUNK = 64 * 1024

#: Signs a device request: (action, body) -> wire ``{"request", "signature"}``.
Sign = Callable[[str, dict[str, Any]], Mapping[str, str]]


class DeviceChannelFetcher(FetcherInterface):
    """A ``tuf.ngclient`` fetcher whose every download is a signed ``update_fetch`` request.

    Args:
        http: Client bound to the hub's API (HTTPS against the fleet CA).
        sign: Signs a device request inside the device's key store.
        base_url: The repository URL the updater was given.
    """

    def __init__(self, http: httpx.Client, sign: Sign, base_url: str = REPOSITORY_URL) -> None:
        self._http = http
        self._sign = sign
        self._base = base_url.rstrip("/") + "/"

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self._base):
            raise DownloadError(f"not a repository URL: {url}")
        path = url[len(self._base):]
        wire = dict(self._sign("update_fetch", {"path": path}))
        response = self._http.send(self._http.build_request("POST", FETCH_ROUTE, json=wire), stream=True)
        if response.status_code != 200:
            response.close()
            raise DownloadHTTPError(f"hub answered HTTP {response.status_code} for {path}", response.status_code)
        return self._chunks(response)

    @staticmethod
    def _chunks(response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(_CHUNK)
        except httpx.HTTPError as exc:
            raise DownloadError(f"download interrupted: {type(exc).__name__}") from exc
        finally:
            response.close()


class UpdateCheckIn:
    """The device's ``update_check`` request: report the last attempt, learn what to install."""

    def __init__(self, http: httpx.Client, sign: Sign) -> None:
        self._http = http
        self._sign = sign

    def __call__(self, *, version: int, attempted: int = 0, outcome: str = "none") -> int:
        """Returns the release to install now (0: none).

        Raises:
            UpdateRefused: the hub refused the check-in.
        """
        wire = dict(self._sign("update_check", {"version": version, "attempted": attempted, "outcome": outcome}))
        response = self._http.post(CHECK_ROUTE, json=wire)
        if response.status_code != 200:
            raise UpdateRefused(f"hub refused the update check-in: HTTP {response.status_code}")
        install = response.json().get("install", 0)
        if not isinstance(install, int) or isinstance(install, bool) or install < 0:
            raise UpdateRefused("hub answered a malformed update check-in")
        return install


def device_update_channel(agent: Agent) -> tuple[DeviceChannelFetcher, UpdateCheckIn]:
    """The enrolled ``agent``'s update fetcher and check-in: its hub client (HTTPS, pinned fleet CA)
    and its identity key (inside its key store) signing each request."""

    def sign(action: str, body: dict[str, Any]) -> Mapping[str, str]:
        return agent._signed(action, body)[0]

    http = agent._client_http()
    return DeviceChannelFetcher(http, sign), UpdateCheckIn(http, sign)


@dataclass(frozen=True)
class UpdateRound:
    """What one check-in-install-report round did.

    Attributes:
        offered: The release the hub named (0: none).
        version: The committed version afterwards.
        outcome: ``none``, ``committed``, ``rolled_back`` or ``refused`` (the reason code follows).
        reason: Reason code when refused.
    """

    offered: int
    version: int
    outcome: str
    reason: str = ""


def update_round(client: FirmwareUpdateClient, check_in: UpdateCheckIn) -> UpdateRound:
    """Check in, install what the hub names (A/B, self-test, rollback), report how it ended.

    A refused update (TUF, anti-rollback counter) is not reported as an
    install outcome: the device keeps its firmware and says so at its next check-in.

    Raises:
        UpdateRefused: the hub refused a check-in (the install, if any, stands).
    """
    running = client.slots.active().version
    offered = check_in(version=running)
    if offered == 0 or offered <= running:
        return UpdateRound(offered, running, "none")
    try:
        outcome = client.install(offered)
    except (UpdateRefused, RollbackError) as exc:
        return UpdateRound(offered, running, "refused", exc.code)
    result = "rolled_back" if outcome.rolled_back else "committed"
    check_in(version=outcome.version, attempted=offered, outcome=result)
    return UpdateRound(offered, outcome.version, result)
