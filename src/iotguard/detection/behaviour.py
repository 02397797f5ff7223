"""Rules over what the hub sees of devices: authentication failures and sessions.

* :class:`CredentialGuessingRule` — many authentication failures from one
  source address within a window (default-credential guessing against the
  API or the broker).
* :class:`CloneRule` — one device identity active from two source addresses
  at overlapping times (a cloned device publishing from a second location).

* :class:`RefusalRule` — an authenticated device the policy keeps denying
  (``policy_denials``: probing for what it may do, lateral movement).
  Forged, replayed or stale requests under a device's id are *not* counted
  against that device: anyone who knows a device id can send them, and
  alerts raise the named device's risk, so counting them would let an
  attacker contain any device by name.
* :class:`AppraisalRule` — a remote attestation appraised the device's
  evidence as ``contraindicated`` (``attestation_failed``, critical) or
  ``warning`` (``attestation_degraded``, medium).

All keep bounded state: the last ``threshold`` failure times per key, and a
few recent addresses per device, for at most ``max_keys`` keys.

:class:`RefusalRule` and :class:`AppraisalRule` export one device's state
(its recent refusal times and when each detector last alerted on it) as
strict canonical CBOR of at most :data:`MAX_SIGNAL_STATE_BYTES`
(``export_state`` / ``import_state``), so the hub keeps it in the detector-state
store shared by its processes (ADR 0752).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from iotguard.detection._cbor import decode_canonical_map
from iotguard.detection.alert import Alert, Severity
from iotguard.detection.rules import Throttle
from iotguard.errors import ConfigError, MalformedError

__all__ = [
    "MAX_SIGNAL_STATE_BYTES",
    "AppraisalRule",
    "AuthFailure",
    "CloneRule",
    "CredentialGuessingRule",
    "Refusal",
    "RefusalRule",
    "SessionSeen",
]


#: Largest stored state of one device in a hub-signal rule.
MAX_SIGNAL_STATE_BYTES: Final = 4096
_SIGNAL_STATE_VERSION: Final = 1


def _encode_signal_state(times: dict[str, list[float]], alerted: dict[str, float]) -> bytes | None:
    if not times and not alerted:
        return None
    return bytes(cbor2.dumps({"v": _SIGNAL_STATE_VERSION, "times": times, "alerted": alerted}, canonical=True))


def _decode_signal_state(data: bytes, detectors: Mapping[str, int]) -> tuple[dict[str, list[float]],
                                                                            dict[str, float]]:
    """Times per detector (at most ``detectors[name]``, ascending) and last alert per detector, strictly.

    Raises:
        MalformedError: ``detector_state_*`` (too large, not CBOR, keys, not canonical, version, bad value).
    """
    body = decode_canonical_map(data, max_bytes=MAX_SIGNAL_STATE_BYTES, keys={"v", "times", "alerted"},
                                version=_SIGNAL_STATE_VERSION, prefix="detector_state", what="hub-signal state")

    def finite(v: Any) -> bool:
        return type(v) is float and math.isfinite(v)

    times, alerted = body["times"], body["alerted"]
    if not isinstance(times, dict) or not all(
            k in detectors and isinstance(v, list) and 0 < len(v) <= detectors[k] and all(map(finite, v))
            and v == sorted(v) for k, v in times.items()):
        raise MalformedError("hub-signal state: bad refusal times", code="detector_state_bad_value")
    if not isinstance(alerted, dict) or not all(k in detectors and finite(t) for k, t in alerted.items()):
        raise MalformedError("hub-signal state: alerted must map detectors to times", code="detector_state_bad_value")
    return times, alerted


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """A failed authentication seen by the hub or broker.

    Attributes:
        ts: POSIX seconds.
        source: Source address of the attempt.
        principal: The identity that was tried (user name, device id, token prefix).
        reason: The rejection's reason code.
    """

    ts: float
    source: str
    principal: str
    reason: str = "unauthenticated"


@dataclass(frozen=True, slots=True)
class SessionSeen:
    """A device seen active (connected or publishing) from an address at a time."""

    ts: float
    device: str
    address: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A device request the hub refused (a signed request, a reading).

    Attributes:
        ts: POSIX seconds.
        device: The device id the request claimed.
        reason: The refusal's reason code (``forged``, ``replay``, ``policy_denied``, ...).
        action: What was asked (``rekey``, ``publish``, ...).
    """

    ts: float
    device: str
    reason: str
    action: str = ""


class _Bounded(OrderedDict[str, object]):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def touch(self, key: str) -> None:
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class CredentialGuessingRule:
    """``threshold`` or more authentication failures from one source within ``window_s``.

    Args:
        devices: Address -> device id, to name a fleet device that is guessing.
        threshold: Failures that make an alert.
        window_s: Sliding window.
        realert_s: Quiet time per source after an alert.
        max_keys: Sources remembered at most.
    """

    name = "credential_guessing"

    def __init__(self, devices: Mapping[str, str] | None = None, threshold: int = 10, window_s: float = 60.0,
                 realert_s: float = 300.0, max_keys: int = 100_000) -> None:
        if threshold < 2 or window_s <= 0:
            raise ConfigError("threshold below 2 or window not positive", code="detection_config_invalid")
        self.devices = dict(devices or {})
        self.threshold = threshold
        self.window_s = window_s
        self.throttle = Throttle(realert_s, max_keys)
        self._times = _Bounded(max_keys)
        self._principals = _Bounded(max_keys)

    def observe(self, events: Iterable[AuthFailure]) -> list[Alert]:
        """Feed failures (in time order); alerts for sources over the threshold."""
        out: list[Alert] = []
        for ev in events:
            times = self._times.get(ev.source)
            if not isinstance(times, deque):
                times = deque(maxlen=self.threshold)
                self._times[ev.source] = times
            self._times.touch(ev.source)
            times.append(ev.ts)
            principals = self._principals.get(ev.source)
            if not isinstance(principals, set):
                principals = set()
                self._principals[ev.source] = principals
            self._principals.touch(ev.source)
            if len(principals) < 64:
                principals.add(ev.principal)
            if len(times) == self.threshold and ev.ts - times[0] <= self.window_s:
                device = self.devices.get(ev.source, ev.source)
                if self.throttle.allow(device, self.name, ev.ts):
                    rate = self.threshold / max(ev.ts - times[0], 1e-3)
                    out.append(Alert.create(device, self.name, rate, Severity.HIGH, (times[0], ev.ts), {
                        "address": ev.source, "failures": self.threshold, "principals": len(principals),
                        "window_s": self.window_s, "reason": ev.reason}))
        return out


class CloneRule:
    """One device identity active from two addresses within ``window_s``.

    Args:
        window_s: Two addresses seen within this time are concurrent.
        realert_s: Quiet time per device after an alert.
        max_keys: Devices remembered at most.
    """

    name = "cloned_device"

    def __init__(self, window_s: float = 120.0, realert_s: float = 300.0, max_keys: int = 100_000) -> None:
        self.window_s = window_s
        self.throttle = Throttle(realert_s, max_keys)
        self._seen = _Bounded(max_keys)

    def observe(self, events: Iterable[SessionSeen]) -> list[Alert]:
        """Feed session sightings (in time order); alerts for devices seen from two places."""
        out: list[Alert] = []
        for ev in events:
            seen = self._seen.get(ev.device)
            if not isinstance(seen, dict):
                seen = {}
                self._seen[ev.device] = seen
            self._seen.touch(ev.device)
            seen[ev.address] = ev.ts
            for address in [a for a, t in seen.items() if ev.ts - t > self.window_s]:
                del seen[address]
            while len(seen) > 4:
                del seen[min(seen, key=seen.__getitem__)]
            if len(seen) >= 2 and self.throttle.allow(ev.device, self.name, ev.ts):
                addresses = sorted(seen)
                out.append(Alert.create(ev.device, self.name, float(len(seen)), Severity.CRITICAL,
                                        (min(seen.values()), ev.ts),
                                        {"addresses": ",".join(addresses)[:120], "window_s": self.window_s}))
        return out


#: Refusal reason -> (detector, threshold, severity): what repeated refusals of one device mean. Only
#: refusals that prove the device itself asked (its signature verified) belong here.
REFUSAL_CLASSES: dict[str, tuple[str, int, Severity]] = {
    "policy_denied": ("policy_denials", 5, Severity.MEDIUM),
}


class RefusalRule:
    """Repeated refusals of one device within ``window_s`` (classes in :data:`REFUSAL_CLASSES`).

    Other reasons (forged, replay, stale, unknown device, malformed,
    revoked, expired, locked out) do not prove the named device asked, or are
    its ordinary end of life, and are not counted.

    Args:
        window_s: Sliding window.
        realert_s: Quiet time per device and detector after an alert.
        max_keys: (device, detector) pairs remembered at most.
    """

    def __init__(self, window_s: float = 60.0, realert_s: float = 300.0, max_keys: int = 100_000) -> None:
        if window_s <= 0:
            raise ConfigError("window not positive", code="detection_config_invalid")
        self.window_s = window_s
        self.throttle = Throttle(realert_s, max_keys)
        self._times = _Bounded(max_keys)

    def observe(self, events: Iterable[Refusal]) -> list[Alert]:
        """Feed refusals (in time order); alerts for devices over their class's threshold."""
        out: list[Alert] = []
        for ev in events:
            klass = REFUSAL_CLASSES.get(ev.reason)
            if klass is None:
                continue
            detector, threshold, severity = klass
            key = f"{detector}\x00{ev.device}"
            times = self._times.get(key)
            if not isinstance(times, deque):
                times = deque(maxlen=threshold)
                self._times[key] = times
            self._times.touch(key)
            times.append(ev.ts)
            if len(times) == threshold and ev.ts - times[0] <= self.window_s and \
                    self.throttle.allow(ev.device, detector, ev.ts):
                out.append(Alert.create(ev.device, detector, float(threshold), severity, (times[0], ev.ts), {
                    "refusals": threshold, "reason": ev.reason, "action": ev.action[:32],
                    "window_s": self.window_s}))
        return out

    def export_state(self, device: str) -> bytes | None:
        """``device``'s refusal times and throttle as canonical CBOR (None: nothing known of it)."""
        times: dict[str, list[float]] = {}
        for detector, _, _ in REFUSAL_CLASSES.values():
            kept = self._times.get(f"{detector}\x00{device}")
            if isinstance(kept, deque) and kept:
                times[detector] = list(kept)
        return _encode_signal_state(times, self.throttle.last_of(device))

    def import_state(self, device: str, data: bytes | None) -> None:
        """Replace ``device``'s state by one :meth:`export_state` wrote (None: forget the device).

        Raises:
            MalformedError: ``detector_state_*``; the device's state is then forgotten.
        """
        limits = {detector: threshold for detector, threshold, _ in REFUSAL_CLASSES.values()}
        for detector in limits:
            self._times.pop(f"{detector}\x00{device}", None)
        self.throttle.forget(device)
        if data is None:
            return
        times, alerted = _decode_signal_state(data, limits)
        for detector, kept in times.items():
            key = f"{detector}\x00{device}"
            self._times[key] = deque(kept, maxlen=limits[detector])
            self._times.touch(key)
        self.throttle.restore(device, alerted)


class AppraisalRule:
    """Attestation appraisals that did not affirm the device become alerts (one per device and tier per
    ``realert_s``: a device re-attesting in a loop is one alert, not a flood).

    Args:
        realert_s: Quiet time per device and detector after an alert.
    """

    #: Appraisal tier -> (detector, severity).
    TIERS: dict[str, tuple[str, Severity]] = {
        "contraindicated": ("attestation_failed", Severity.CRITICAL),
        "warning": ("attestation_degraded", Severity.MEDIUM),
    }

    def __init__(self, realert_s: float = 300.0) -> None:
        self.throttle = Throttle(realert_s)

    def observe(self, device: str, tier: str, reasons: Iterable[str], ts: float) -> list[Alert]:
        """An appraisal of ``device`` with its overall ``tier`` and reason codes."""
        found = self.TIERS.get(tier)
        if found is None or not self.throttle.allow(device, found[0], ts):
            return []
        detector, severity = found
        return [Alert.create(device, detector, 1.0, severity, (ts, ts),
                             {"tier": tier, "reasons": ",".join(sorted(reasons))[:120]})]

    def export_state(self, device: str) -> bytes | None:
        """When each detector last alerted on ``device``, as canonical CBOR (None: never)."""
        return _encode_signal_state({}, self.throttle.last_of(device))

    def import_state(self, device: str, data: bytes | None) -> None:
        """Replace ``device``'s state by one :meth:`export_state` wrote (None: forget the device).

        Raises:
            MalformedError: ``detector_state_*``; the device's state is then forgotten.
        """
        self.throttle.forget(device)
        if data is not None:
            self.throttle.restore(device, _decode_signal_state(data, {d: 0 for d, _ in self.TIERS.values()})[1])
