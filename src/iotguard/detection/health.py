"""A device's own health metrics: the signed report's strict format and a per-device behaviour baseline.

The agent reports, in the body of a signed ``report_health`` device
request, one canonical CBOR map ::

    {"v": 1, "ts": 1767225600, "cpu_permille": 37, "mem_kib": 5120,
     "process_digest": h'32 bytes',              # SHA-256 over the sorted running executables
     "listening": [8080],                        # listening TCP/UDP ports, sorted, distinct
     "outbound": [["10.0.0.1:8883", 5300]],      # bytes sent per destination since the last report
     "messages": 12,                             # messages published since the last report
     "auth_failures": 0}                         # failed local logins since the last report

:func:`decode_health_report` checks size, exact keys, types and bounds and
refuses with one ``health_*`` reason code. :class:`HealthDetector` learns
each device's normal from its first ``learn_reports`` reports (process
digests, listening ports, destinations, and the mean and spread of CPU,
memory, message and byte rates) and then alerts on what departs from it:

| detector | fires when | severity |
| --- | --- | --- |
| ``process_change`` | a process-set digest never seen while learning | high |
| ``new_listening_port`` | a port the device never listened on (a backdoor, a telnet daemon) | high |
| ``new_destination`` | outbound bytes to a destination never seen | medium |
| ``health_anomaly`` | CPU, memory, message or byte rate more than ``z_threshold`` spreads from its mean | medium |
| ``auth_failures`` | at least ``auth_failure_threshold`` failed logins in one report (even while learning) | high |

State is bounded: at most ``max_devices`` devices (least recently reporting
evicted) and, per device, 8 digests, 64 ports and 256 destinations.
:meth:`HealthDetector.export_state` writes one device's state (baseline and
when each detector last alerted on it) as canonical CBOR of at most
:data:`MAX_STATE_BYTES`; :meth:`HealthDetector.import_state` reads it back
strictly (``detector_state_*`` reason codes), so the hub can keep it in its
database and every hub process continues the same baseline (ADR 0751).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import cbor2

from iotguard.detection._cbor import decode_canonical_map
from iotguard.detection.alert import Alert, Severity
from iotguard.detection.rules import Throttle
from iotguard.errors import ConfigError, MalformedError

__all__ = [
    "MAX_STATE_BYTES",
    "HealthConfig",
    "HealthDetector",
    "HealthReport",
    "decode_health_report",
    "encode_health_report",
]

VERSION: Final = 1
MAX_REPORT_BYTES: Final = 8192
_KEYS: Final = frozenset({"v", "ts", "cpu_permille", "mem_kib", "process_digest", "listening", "outbound",
                          "messages", "auth_failures"})
_MAX_PORTS: Final = 64
_MAX_DESTINATIONS: Final = 32
_MAX_COUNT: Final = 2**40
#: Largest serialised state of one device (256 destinations of 80 characters fit with room to spare).
MAX_STATE_BYTES: Final = 32 * 1024
STATE_VERSION: Final = 1
_STATE_KEYS: Final = frozenset({"v", "reports", "digests", "ports", "destinations", "mean", "m2", "alerted"})
_DETECTORS: Final = frozenset({"auth_failures", "process_change", "new_listening_port", "new_destination",
                               "health_anomaly"})


@dataclass(frozen=True)
class HealthReport:
    """One health report of one device.

    Attributes:
        ts: Measurement time (POSIX seconds).
        cpu_permille: CPU use in thousandths of one core (0..64000).
        mem_kib: Resident memory in KiB.
        process_digest: SHA-256 over the sorted set of running executables.
        listening: Listening ports, sorted and distinct.
        outbound: (destination ``host:port``, bytes sent) since the last report.
        messages: Messages published since the last report.
        auth_failures: Failed local logins since the last report.
    """

    ts: int
    cpu_permille: int
    mem_kib: int
    process_digest: bytes
    listening: tuple[int, ...] = ()
    outbound: tuple[tuple[str, int], ...] = ()
    messages: int = 0
    auth_failures: int = 0


def _fail(code: str, what: str) -> MalformedError:
    return MalformedError(f"health report: {what}", code=f"health_{code}")


def encode_health_report(report: HealthReport) -> bytes:
    """Canonical CBOR of a report (the agent's side; checked as the hub checks it).

    Raises:
        MalformedError: a ``health_*`` code, as :func:`decode_health_report`.
    """
    data = bytes(cbor2.dumps({
        "v": VERSION, "ts": report.ts, "cpu_permille": report.cpu_permille, "mem_kib": report.mem_kib,
        "process_digest": report.process_digest, "listening": list(report.listening),
        "outbound": [[d, b] for d, b in report.outbound], "messages": report.messages,
        "auth_failures": report.auth_failures}, canonical=True))
    decode_health_report(data)
    return data


def _uint(body: dict[str, Any], name: str, upper: int = _MAX_COUNT) -> int:
    value = body[name]
    if type(value) is not int or not 0 <= value <= upper:
        raise _fail("bad_value", f"{name} must be an integer in 0..{upper}")
    return value


def decode_health_report(data: bytes) -> HealthReport:
    """Decode a health report strictly (the hub's side).

    Raises:
        MalformedError: ``health_too_large``, ``health_not_cbor``,
            ``health_not_canonical``, ``health_bad_keys``, ``health_version``,
            ``health_bad_value``, ``health_bad_ports`` or ``health_bad_outbound``.
    """
    body = decode_canonical_map(data, max_bytes=MAX_REPORT_BYTES, keys=_KEYS, version=VERSION, prefix="health",
                                what="health report")
    digest = body["process_digest"]
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise _fail("bad_value", "process_digest must be 32 bytes")
    ports = body["listening"]
    if not isinstance(ports, list) or len(ports) > _MAX_PORTS or \
            not all(type(p) is int and 0 < p <= 65535 for p in ports) or ports != sorted(set(ports)):
        raise _fail("bad_ports", f"listening must be at most {_MAX_PORTS} sorted distinct ports")
    outbound = body["outbound"]
    if not isinstance(outbound, list) or len(outbound) > _MAX_DESTINATIONS or not all(
            isinstance(o, list) and len(o) == 2 and isinstance(o[0], str) and 0 < len(o[0]) <= 80
            and o[0].isprintable() and type(o[1]) is int and 0 <= o[1] <= _MAX_COUNT for o in outbound) \
            or len({o[0] for o in outbound}) != len(outbound):
        raise _fail("bad_outbound", f"outbound must be at most {_MAX_DESTINATIONS} distinct [destination, bytes]")
    return HealthReport(_uint(body, "ts", 2**40), _uint(body, "cpu_permille", 64_000), _uint(body, "mem_kib"),
                        digest, tuple(ports), tuple((str(d), int(b)) for d, b in outbound),
                        _uint(body, "messages"), _uint(body, "auth_failures"))


@dataclass(frozen=True)
class HealthConfig:
    """Settings of :class:`HealthDetector`.

    Attributes:
        learn_reports: Reports per device that form its baseline.
        z_threshold: Spreads from the mean that make a metric anomalous.
        auth_failure_threshold: Failures in one report that make an alert.
        realert_s: Quiet time per device and detector after an alert.
        max_devices: Devices remembered at most.
    """

    learn_reports: int = 10
    z_threshold: float = 6.0
    auth_failure_threshold: int = 10
    realert_s: float = 300.0
    max_devices: int = 100_000

    def __post_init__(self) -> None:
        if self.learn_reports < 3 or self.z_threshold <= 0 or self.auth_failure_threshold < 1:
            raise ConfigError("health detector settings out of range", code="detection_config_invalid")


_METRICS: Final = ("cpu_permille", "mem_kib", "messages", "outbound_bytes")


@dataclass
class _Baseline:
    reports: int = 0
    digests: set[bytes] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    destinations: set[str] = field(default_factory=set)
    # Welford's running mean and sum of squared deviations, per metric (on log1p of the value).
    mean: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_METRICS, 0.0))
    m2: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_METRICS, 0.0))

    def learn(self, report: HealthReport, values: dict[str, float]) -> None:
        self.reports += 1
        if len(self.digests) < 8:
            self.digests.add(report.process_digest)
        self.ports.update(list(report.listening)[: max(0, 64 - len(self.ports))])
        for dest, _ in report.outbound:
            if len(self.destinations) < 256:
                self.destinations.add(dest)
        for name, x in values.items():
            delta = x - self.mean[name]
            self.mean[name] += delta / self.reports
            self.m2[name] += delta * (x - self.mean[name])


class HealthDetector:
    """Per-device baselines over health reports; alerts when a device departs from its own.

    Args:
        config: Settings.
    """

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        self._devices: OrderedDict[str, _Baseline] = OrderedDict()
        self._throttle = Throttle(self.config.realert_s)

    def export_state(self, device: str) -> bytes | None:
        """``device``'s state as canonical CBOR (None: nothing known of it)."""
        base = self._devices.get(device)
        if base is None:
            return None
        return bytes(cbor2.dumps({
            "v": STATE_VERSION, "reports": base.reports, "digests": sorted(base.digests),
            "ports": sorted(base.ports), "destinations": sorted(base.destinations),
            "mean": [base.mean[m] for m in _METRICS], "m2": [base.m2[m] for m in _METRICS],
            "alerted": self._throttle.last_of(device)}, canonical=True))

    def import_state(self, device: str, data: bytes) -> None:
        """Replace ``device``'s state by one :meth:`export_state` wrote.

        Raises:
            MalformedError: ``detector_state_too_large``, ``detector_state_not_cbor``,
                ``detector_state_bad_keys``, ``detector_state_not_canonical``,
                ``detector_state_version`` or ``detector_state_bad_value``.
        """
        body = decode_canonical_map(data, max_bytes=MAX_STATE_BYTES, keys=_STATE_KEYS, version=STATE_VERSION,
                                    prefix="detector_state", what="health detector state")

        def bad(what: str) -> MalformedError:
            return MalformedError(f"health detector state: {what}", code="detector_state_bad_value")

        def sorted_distinct(value: Any, limit: int, ok: Any) -> list[Any]:
            if not isinstance(value, list) or len(value) > limit or not all(ok(v) for v in value) \
                    or value != sorted(set(value)):
                raise bad(f"a set of at most {limit} items expected")
            return value

        def floats(value: Any, low: float) -> list[float]:
            if not isinstance(value, list) or len(value) != len(_METRICS) or not all(
                    type(v) is float and math.isfinite(v) and v >= low for v in value):
                raise bad("metric statistics must be finite numbers")
            return value

        reports = body["reports"]
        if type(reports) is not int or not 0 <= reports <= _MAX_COUNT:
            raise bad("reports out of range")
        alerted = body["alerted"]
        if not isinstance(alerted, dict) or not all(
                k in _DETECTORS and type(t) is float and math.isfinite(t) for k, t in alerted.items()):
            raise bad("alerted must map detectors to times")
        base = _Baseline(reports,
                         set(sorted_distinct(body["digests"], 8, lambda v: isinstance(v, bytes) and len(v) == 32)),
                         set(sorted_distinct(body["ports"], 64, lambda v: type(v) is int and 0 < v <= 65535)),
                         set(sorted_distinct(body["destinations"], 256, lambda v: isinstance(v, str)
                                             and 0 < len(v) <= 80 and v.isprintable())),
                         dict(zip(_METRICS, floats(body["mean"], -math.inf), strict=True)),
                         dict(zip(_METRICS, floats(body["m2"], 0.0), strict=True)))
        self._devices[device] = base
        self._devices.move_to_end(device)
        while len(self._devices) > self.config.max_devices:
            self._devices.popitem(last=False)
        self._throttle.restore(device, dict(alerted))

    def learning(self, device: str) -> bool:
        """Whether ``device``'s baseline is still being learned."""
        base = self._devices.get(device)
        return base is None or base.reports < self.config.learn_reports

    def observe(self, device: str, report: HealthReport) -> list[Alert]:
        """Alerts for one report of ``device`` (reports of one device in time order)."""
        base = self._devices.get(device)
        if base is None:
            base = self._devices[device] = _Baseline()
            while len(self._devices) > self.config.max_devices:
                self._devices.popitem(last=False)
        self._devices.move_to_end(device)
        values = {"cpu_permille": float(report.cpu_permille), "mem_kib": float(report.mem_kib),
                  "messages": float(report.messages), "outbound_bytes": float(sum(b for _, b in report.outbound))}
        logs = {k: math.log1p(v) for k, v in values.items()}
        ts = float(report.ts)
        out: list[Alert] = []
        if report.auth_failures >= self.config.auth_failure_threshold:
            self._alert(out, device, "auth_failures", float(report.auth_failures), Severity.HIGH, ts,
                        {"failures": report.auth_failures})
        if base.reports < self.config.learn_reports:
            base.learn(report, logs)
            return out
        if report.process_digest not in base.digests:
            self._alert(out, device, "process_change", 1.0, Severity.HIGH, ts,
                        {"digest": report.process_digest.hex()[:16], "known_digests": len(base.digests)})
        new_ports = sorted(set(report.listening) - base.ports)
        if new_ports:
            self._alert(out, device, "new_listening_port", float(len(new_ports)), Severity.HIGH, ts,
                        {"ports": ",".join(map(str, new_ports[:16]))})
        new_dest = sorted(d for d, b in report.outbound if b > 0 and d not in base.destinations)
        if new_dest:
            self._alert(out, device, "new_destination", float(len(new_dest)), Severity.MEDIUM, ts,
                        {"destinations": ",".join(new_dest[:4])[:120]})
        z = {}
        for name, x in logs.items():
            spread = math.sqrt(base.m2[name] / max(base.reports - 1, 1))
            z[name] = abs(x - base.mean[name]) / max(spread, 0.1)  # a floor: a constant metric may still wobble
        worst = max(z, key=z.__getitem__)
        if z[worst] > self.config.z_threshold:
            self._alert(out, device, "health_anomaly", z[worst] / self.config.z_threshold, Severity.MEDIUM, ts,
                        {"metric": worst, "value": values[worst], "z": round(z[worst], 2)})
        return out

    def _alert(self, out: list[Alert], device: str, detector: str, score: float, severity: Severity, ts: float,
               evidence: dict[str, Any]) -> None:
        if self._throttle.allow(device, detector, ts):
            out.append(Alert.create(device, detector, score, severity, (ts, ts), evidence))
