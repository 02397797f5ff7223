"""Device posture: the state that changes decisions without changing policy.

Posture is what the attestation verifier, detection and the CA know about a
device right now: trust tier, risk score, certificate expiry, freshness of
its last verified attestation, declared location, segment and quarantine.
Every change bumps the store's ``version`` and notifies listeners (the
engine's decision cache, the session registry) before the call returns, so a
change takes effect at every enforcement point at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from iotguard.errors import ConfigError, UnknownDeviceError
from iotguard.policy.model import QUARANTINE_SEGMENT, TRUST_TIERS
from iotguard.policy.topics import check_identifier

__all__ = ["Posture", "PostureListener", "PostureStore", "SegmentSpec"]

#: Called with the id of the device whose posture changed.
PostureListener = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Posture:
    """What is known about one device.

    Attributes:
        device_id: Registry id.
        segment: Home segment (from the registry).
        model: Device model.
        trust_tier: One of :data:`~iotguard.policy.model.TRUST_TIERS`.
        risk_score: 0..100, from detection.
        cert_not_after: Expiry of the operational certificate; ``None``
            means no valid certificate (fail closed).
        attested_at: Time of the last *verified* attestation.
        declared_location: Site the device declares.
        quarantined: True while the device sits in the quarantine segment.
    """

    device_id: str
    segment: str
    model: str = ""
    trust_tier: str = "unverified"
    risk_score: int = 0
    cert_not_after: datetime | None = None
    attested_at: datetime | None = None
    declared_location: str = ""
    quarantined: bool = False

    def __post_init__(self) -> None:
        check_identifier("device id", self.device_id)
        check_identifier("segment", self.segment)
        if self.trust_tier not in TRUST_TIERS:
            raise ConfigError(f"unknown trust tier {self.trust_tier!r}")
        if not 0 <= self.risk_score <= 100:
            raise ConfigError(f"risk score {self.risk_score} outside 0..100")
        for stamp in (self.cert_not_after, self.attested_at):
            if stamp is not None and stamp.tzinfo is None:
                raise ConfigError("posture times must be timezone-aware")

    @property
    def effective_segment(self) -> str:
        """The segment policies see: quarantine while quarantined."""
        return QUARANTINE_SEGMENT if self.quarantined else self.segment


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """Attributes of a segment, as Cedar ``Segment`` entity attributes.

    Attributes:
        quarantined: The segment is a quarantine.
        sites: Locations its devices may declare (empty: any).
        update_window_start: First UTC hour firmware updates may run.
        update_window_end: Hour the update window closes (exclusive).
    """

    quarantined: bool = False
    sites: frozenset[str] = field(default_factory=frozenset)
    update_window_start: int = 0
    update_window_end: int = 24

    def __post_init__(self) -> None:
        if not (0 <= self.update_window_start <= 24 and 0 <= self.update_window_end <= 24):
            raise ConfigError("update window hours must lie in 0..24")

    def cedar_attrs(self) -> dict[str, Any]:
        """Cedar JSON attributes of the ``Segment`` entity."""
        return {
            "quarantined": self.quarantined,
            "sites": sorted(self.sites),
            "update_window_start": self.update_window_start,
            "update_window_end": self.update_window_end,
        }


class PostureStore:
    """In-memory posture of every known device, with a version number.

    The hub fills it from the device registry at start-up and keeps it
    current from attestation appraisals, detection alerts and the CA. A
    device without posture is unknown to the engine and is denied.
    """

    def __init__(self, postures: Iterable[Posture] = ()) -> None:
        self._lock = threading.RLock()
        self._postures: dict[str, Posture] = {p.device_id: p for p in postures}
        self._version = 0
        self._listeners: list[PostureListener] = []

    @property
    def version(self) -> int:
        """Incremented by every change."""
        return self._version

    def add_listener(self, listener: PostureListener) -> None:
        """Call ``listener(device_id)`` after every change of a device's posture."""
        with self._lock:
            self._listeners.append(listener)

    def get(self, device_id: str) -> Posture | None:
        """Posture of ``device_id``, or ``None`` if unknown."""
        return self._postures.get(device_id)

    def require(self, device_id: str) -> Posture:
        """Posture of ``device_id``.

        Raises:
            UnknownDeviceError: The device has no posture.
        """
        posture = self._postures.get(device_id)
        if posture is None:
            raise UnknownDeviceError(f"no posture for device {device_id!r}")
        return posture

    def __iter__(self) -> Iterator[Posture]:
        return iter(list(self._postures.values()))

    def __len__(self) -> int:
        return len(self._postures)

    def put(self, posture: Posture) -> None:
        """Insert or replace a device's posture."""
        with self._lock:
            if self._postures.get(posture.device_id) == posture:
                return
            self._postures[posture.device_id] = posture
            self._changed(posture.device_id)

    def update(self, device_id: str, **changes: Any) -> Posture:
        """Change some fields of a device's posture; returns the new posture.

        Raises:
            UnknownDeviceError: The device has no posture.
            ConfigError: A new value is invalid.
        """
        with self._lock:
            new = replace(self.require(device_id), **changes)
            self.put(new)
            return new

    def remove(self, device_id: str) -> None:
        """Forget a device (revoked or decommissioned): it is denied from now on."""
        with self._lock:
            if self._postures.pop(device_id, None) is not None:
                self._changed(device_id)

    def quarantine(self, device_id: str) -> Posture:
        """Move a device into the quarantine segment.

        Raises:
            UnknownDeviceError: The device has no posture.
        """
        return self.update(device_id, quarantined=True)

    def release(self, device_id: str) -> Posture:
        """Return a device from quarantine to its home segment.

        Raises:
            UnknownDeviceError: The device has no posture.
        """
        return self.update(device_id, quarantined=False)

    def _changed(self, device_id: str) -> None:
        self._version += 1
        for listener in list(self._listeners):
            listener(device_id)
