"""Devices read the TUF repository over mutual TLS: authenticated and authorized, never written (ADR 1220).

TUF metadata and images are public, signed and freshness-checked by TUF
itself, so a read needs authentication and authorization but no replay
protection: no nonce, no attempt-limit state, no database write. The device
is its TLS client certificate (the transport certificate, ADR 0600), which
must still be the one the registry names for an active device; Cedar decides
``update_fetch`` for it with its posture.

What a read may reuse, and for how long:

- a device's **grant** (its registry check and its Cedar decision) for
  :data:`GRANT_TTL_S`; any posture change of the device (quarantine, a
  failed attestation, revocation, another process's change reaching this
  one) and any registry change this process makes (a renewal superseding
  the transport certificate) drop it at once (:meth:`RepositoryReads.forget_device`),
  so a quarantined device's next read is refused. A change made by another
  hub process that moves no posture reaches this one within the TTL;
- a **metadata file** (or its absence) for :data:`FILE_TTL_S`: the
  consistent-snapshot files never change, and a timestamp or a new root
  another hub process saved reaches devices at most this much later, well
  inside TUF's own expiry. Images are read from the store each time.

Every refusal is audited by the device plane (``auth.failed``); refusals
write, reads do not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from iotguard.clock import Clock
from iotguard.errors import AuthenticationError, IotGuardError, RevokedError, UnknownDeviceError
from iotguard.hub.device_plane import DevicePlane
from iotguard.hub.device_tls import PeerCertificate
from iotguard.hub.event_counts import EventCounts
from iotguard.hub.services.firmware import FirmwareService
from iotguard.hub.stores.devices import DeviceStore
from iotguard.policy import PostureStore

__all__ = ["FILE_TTL_S", "GRANT_TTL_S", "MAX_CACHED_FILES", "RepositoryReads"]

#: Seconds a device's registry check and Cedar decision serve its reads (posture changes drop it sooner).
GRANT_TTL_S = 5.0
#: Seconds a metadata file (or its absence) is served from memory.
FILE_TTL_S = 1.0
#: Most metadata files (and misses) kept in memory; past it the cache starts over.
MAX_CACHED_FILES = 4096
#: The Cedar action of a repository read (the same as the signed ``update_fetch`` request's).
ACTION = "update_fetch"


@dataclass(frozen=True)
class _Grant:
    serial: str
    model: str
    expires: float


class RepositoryReads:
    """Serves repository files to devices identified by their TLS client certificate.

    Args:
        firmware: The repository (its path rules: a device reads its own model's files only).
        devices: The registry (status and current transport certificate of a device).
        plane: The device plane (the Cedar decision and the audit of refusals).
        posture: Device postures; any change of one drops that device's grant (a repository change this
            process saves drops the cached files).
        clock: Time source (monotonic time bounds the caches).
        grant_ttl_s: How long a grant serves reads.
        file_ttl_s: How long a metadata file is served from memory.
    """

    def __init__(self, firmware: FirmwareService, devices: DeviceStore, plane: DevicePlane, posture: PostureStore,
                 clock: Clock, *, grant_ttl_s: float = GRANT_TTL_S, file_ttl_s: float = FILE_TTL_S) -> None:
        self._firmware = firmware
        self._devices = devices
        self._plane = plane
        self._clock = clock
        self._grant_ttl = grant_ttl_s
        self._file_ttl = file_ttl_s
        self._lock = threading.Lock()
        self._grants: dict[str, _Grant] = {}
        self._files: dict[str, tuple[bytes | None, float]] = {}
        #: Reads by this process: ("served", "") or ("refused", reason code) -> count (``/metrics``).
        self.outcomes = EventCounts()
        self._generation = 0  # moves with every forgotten grant: a decision racing a change is not kept
        posture.add_listener(self.forget_device)
        firmware.add_listener(self.forget_files)

    def forget_device(self, device_id: str) -> None:
        """Drop a device's grant (its posture changed): its next read is decided afresh."""
        with self._lock:
            self._generation += 1
            self._grants.pop(device_id, None)

    def forget_files(self) -> None:
        """Drop every cached file (this process just changed the repository)."""
        with self._lock:
            self._files.clear()

    def cached(self, peer: PeerCertificate | None, path: str) -> bytes | None:
        """The answer when everything it needs is in memory (no I/O), else ``None``: call :meth:`read`.

        Raises:
            MalformedError, UpdateRefused: as :meth:`read`, for a request answered from memory.
        """
        if peer is None:
            return None
        now = self._clock.monotonic()
        grant = self._grants.get(peer.device_id)
        if grant is None or grant.expires <= now or grant.serial != peer.serial:
            return None
        entry = self._files.get(path)
        if entry is None or entry[1] <= now:
            return None
        model, body = grant.model, entry[0]
        return self._counted(lambda: self._firmware.device_file(model, path, read=lambda _p: body))

    def read(self, peer: PeerCertificate | None, path: str) -> bytes:
        """One repository file for the device behind ``peer`` (may read the registry and the store).

        Raises:
            AuthenticationError: no client certificate.
            UnknownDeviceError, RevokedError: not a device, or not its current transport certificate.
            PolicyDenied: Cedar denied ``update_fetch`` (a quarantined device, for one).
            MalformedError, UpdateRefused: as :meth:`FirmwareService.device_file`.
        """
        def serve() -> bytes:
            if peer is None:
                raise AuthenticationError("a device client certificate is required")
            grant = self._grant(peer)
            return self._firmware.device_file(grant.model, path, read=self._file)

        return self._counted(serve)

    def _counted(self, serve: Callable[[], bytes]) -> bytes:
        try:
            body = serve()
        except IotGuardError as exc:
            self.outcomes.add("refused", exc.code)
            raise
        self.outcomes.add("served", "")
        return body

    def _grant(self, peer: PeerCertificate) -> _Grant:
        now = self._clock.monotonic()
        grant = self._grants.get(peer.device_id)
        if grant is not None and grant.expires > now and grant.serial == peer.serial:
            return grant
        when = self._clock.now()
        generation = self._generation
        try:
            record = self._devices.get_device(peer.device_id)
            if record.status != "active":
                raise RevokedError(f"device {peer.device_id!r} is {record.status}")
            if record.transport_cert_serial != peer.serial:
                raise RevokedError("not the device's current transport certificate")
        except (UnknownDeviceError, RevokedError) as exc:
            self._plane.refused(peer.device_id, ACTION, exc.code, when)
            raise
        self._plane.authorize(peer.device_id, ACTION, now=when)
        grant = _Grant(peer.serial, record.model, now + self._grant_ttl)
        with self._lock:
            if generation == self._generation:
                self._grants[peer.device_id] = grant
        return grant

    def _file(self, path: str) -> bytes | None:
        if not path.startswith("metadata/"):
            return self._firmware.file(path)
        now = self._clock.monotonic()
        entry = self._files.get(path)
        if entry is not None and entry[1] > now:
            return entry[0]
        body = self._firmware.file(path)
        with self._lock:
            if len(self._files) >= MAX_CACHED_FILES:
                self._files.clear()
            self._files[path] = (body, now + self._file_ttl)
        return body

