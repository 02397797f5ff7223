"""Firmware updates over the authenticated device channel.

:class:`RepositoryFetcher` is the ``tuf.ngclient`` fetcher of an enrolled
device: a plain ``GET`` of each repository file over mutual TLS (the hub
verified against the pinned fleet CA, the device authenticated by its
transport certificate, ADR 0600/1220), on one pooled keep-alive connection.
TUF metadata is public, signed and freshness-checked by TUF itself, so a read
needs no signed request and no replay protection. Over ``unsafe_plain_http``
(no TLS, no client certificate) each file is instead a signed ``update_fetch``
device request (:class:`DeviceChannelFetcher`). Both stream, so python-tuf's
length limits stop an endless answer early.
:class:`UpdateCheckIn` is the rollout side: the device says what it runs
and how its last install ended, the hub names the release to install.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

from iotguard.agent.exchange import CA_FILE, TRANSPORT_FILE
from iotguard.agent.firmware import FirmwareUpdateClient
from iotguard.errors import RollbackError, UpdateRefused
from iotguard.tls import client_context

if TYPE_CHECKING:  # the runtime imports this package's modules; only its type is needed here
    from iotguard.agent.runtime import Agent

__all__ = [
    "CHECK_ROUTE",
    "FETCH_ROUTE",
    "REPOSITORY_ROUTE",
    "REPOSITORY_URL",
    "DeviceChannelFetcher",
    "RepositoryFetcher",
    "UpdateCheckIn",
    "UpdateRound",
    "device_update_channel",
    "update_round",
]

#: Hub route answering ``update_fetch`` requests.
FETCH_ROUTE = "/v1/firmware/fetch"
#: Hub route answering ``update_check`` requests.
CHECK_ROUTE = "/v1/firmware/check"
#: Hub route serving repository files to devices by their TLS client certificate (GET;
#: ``iotguard.hub.repository_front``).
REPOSITORY_ROUTE = "/v1/firmware/repository"
#: The repository's base URL as ngclient sees it (the fetcher maps it onto signed requests).
REPOSITORY_URL = "iotguard-device://firmware"
_CHUNK = 64 * 1024
#: Longest refusal body the fetcher reads (to keep its connection); a longer one closes the connection.
MAX_REFUSAL_BYTES = 4096

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
        return _stream(response, path)

    @staticmethod
    def _chunks(response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(_CHUNK)
        except httpx.HTTPError as exc:
            raise DownloadError(f"download interrupted: {type(exc).__name__}") from exc
        finally:
            response.close()


def _stream(response: httpx.Response, path: str) -> Iterator[bytes]:
    if response.status_code != 200:
        # Read a short refusal to its end, so its keep-alive connection goes back to the pool (a "nothing
        # new" refresh ends with a 404 for the next root); a long one is cut and its connection closed.
        size = 0
        try:
            for chunk in response.iter_bytes(_CHUNK):
                size += len(chunk)
                if size > MAX_REFUSAL_BYTES:
                    break
        except httpx.HTTPError:
            pass
        finally:
            response.close()
        raise DownloadHTTPError(f"hub answered HTTP {response.status_code} for {path}", response.status_code)
    return DeviceChannelFetcher._chunks(response)


class RepositoryFetcher(FetcherInterface):
    """A ``tuf.ngclient`` fetcher reading repository files over mutual TLS on one keep-alive connection.

    The client certificate is the device's transport certificate; when the
    agent renews it (the file changes), the next download opens a new
    connection with the new one.

    Args:
        hub_url: The hub's ``https://`` API URL.
        ca_file: The pinned fleet CA certificate.
        certificate_file: The transport certificate followed by its key (0600).
        base_url: The repository URL the updater was given.
        timeout_s: Connect and read timeout.
    """

    def __init__(self, hub_url: str, ca_file: Path, certificate_file: Path, *, base_url: str = REPOSITORY_URL,
                 timeout_s: float = 15.0) -> None:
        self._hub_url = hub_url
        self._ca = ca_file
        self._certificate = certificate_file
        self._base = base_url.rstrip("/") + "/"
        self._timeout = timeout_s
        self._http: httpx.Client | None = None
        self._loaded: float | None = None

    def _client(self) -> httpx.Client:
        try:
            changed = self._certificate.stat().st_mtime_ns
        except OSError as exc:
            raise DownloadError(f"no transport certificate: {type(exc).__name__}") from None
        if self._http is None or changed != self._loaded:
            self.close()
            self._http = httpx.Client(base_url=self._hub_url, timeout=self._timeout,
                                      verify=client_context(self._ca, certfile=self._certificate))
            self._loaded = changed
        return self._http

    def close(self) -> None:
        """Close the pooled connection."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self._base):
            raise DownloadError(f"not a repository URL: {url}")
        path = url[len(self._base):]
        http = self._client()
        try:
            response = http.send(http.build_request("GET", f"{REPOSITORY_ROUTE}/{quote(path)}"), stream=True)
        except httpx.HTTPError as exc:
            raise DownloadError(f"hub unreachable: {type(exc).__name__}") from exc
        return _stream(response, path)


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


def device_update_channel(agent: Agent) -> tuple[FetcherInterface, UpdateCheckIn]:
    """The enrolled ``agent``'s update fetcher and check-in.

    Over HTTPS the fetcher reads by mutual TLS with the agent's transport
    certificate (:class:`RepositoryFetcher`); the check-in is a signed request
    (identity key, inside the key store) over the agent's hub client. Over
    ``unsafe_plain_http`` both are signed requests.
    """

    def sign(action: str, body: dict[str, Any]) -> Mapping[str, str]:
        return agent._signed(action, body)[0]

    http = agent._client_http()
    check_in = UpdateCheckIn(http, sign)
    if httpx.URL(agent.cfg.hub_url).scheme != "https":
        return DeviceChannelFetcher(http, sign), check_in
    return RepositoryFetcher(agent.cfg.hub_url, agent.dir / CA_FILE, agent.dir / TRANSPORT_FILE), check_in


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
