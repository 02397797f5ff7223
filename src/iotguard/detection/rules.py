"""Rules for what needs no learning: scan fan-out, new destination ports,
beaconing, traffic to known-bad addresses.

Each flow rule reads a batch of flows and its features, and returns at most
one :class:`~iotguard.detection.alert.Alert` per host per batch, with the
evidence that triggered it; a host that keeps triggering a rule is alerted
again only after ``realert_s`` (bounded memory of recent alerts).
Behaviour rules over hub events (credential guessing, cloned devices) live
in :mod:`iotguard.detection.behaviour`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from iotguard.detection.alert import Alert, Scalar, Severity
from iotguard.detection.features import FeatureMatrix
from iotguard.detection.feed import ThreatFeed
from iotguard.detection.flows import PROTOCOLS, FlowBatch

__all__ = ["BeaconRule", "FlowRule", "KnownBadRule", "NewPortRule", "ScanFanOutRule", "Throttle"]

BoolArray = npt.NDArray[np.bool_]
#: A baseline key: ``protocol << 16 | port`` (new ports) or a destination address (beaconing).
Key = int | str


class Throttle:
    """Remembers when each (device, detector) was last alerted; bounded, oldest forgotten first."""

    def __init__(self, realert_s: float, capacity: int = 100_000) -> None:
        self.realert_s = realert_s
        self.capacity = capacity
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    def allow(self, device: str, detector: str, now: float) -> bool:
        """Whether to alert now (and, if so, remember it)."""
        key = (device, detector)
        last = self._last.get(key)
        if last is not None and now - last < self.realert_s:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return True

    def last_of(self, device: str) -> dict[str, float]:
        """When each detector last alerted on ``device`` (to persist one device's throttle)."""
        return {detector: t for (d, detector), t in self._last.items() if d == device}

    def forget(self, device: str) -> None:
        """Drop what is remembered of ``device``."""
        for key in [k for k in self._last if k[0] == device]:
            del self._last[key]

    def restore(self, device: str, last: dict[str, float]) -> None:
        """Put back what :meth:`last_of` returned for ``device``."""
        for detector, t in last.items():
            self._last[(device, detector)] = t
            self._last.move_to_end((device, detector))
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)


class FlowRule:
    """Base of the flow rules: per-host grouping, device naming, throttling.

    Args:
        devices: Address -> device id for addresses that are fleet devices
            (others are reported by address).
        realert_s: Quiet time per host after an alert.
    """

    name = "rule"
    severity = Severity.MEDIUM

    def __init__(self, devices: Mapping[str, str] | None = None, realert_s: float = 300.0) -> None:
        self.devices = dict(devices or {})
        self.throttle = Throttle(realert_s)

    def learn(self, batch: FlowBatch, features: FeatureMatrix) -> None:
        """Learn the benign baseline (rules without one ignore this)."""

    def forget(self, hosts: set[str]) -> None:
        """Drop what was learned about ``hosts`` (flagged while learning; rules without a baseline ignore this)."""

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        """Alerts for this batch."""
        raise TypeError(f"{type(self).__name__} must define evaluate()")

    def _alerts(self, batch: FlowBatch, hit: BoolArray, score: npt.NDArray[np.float64],
                evidence: dict[str, Scalar] | None = None, host_column: str = "orig_h") -> list[Alert]:
        out: list[Alert] = []
        if not hit.any():
            return out
        hosts = getattr(batch, host_column)
        for host in np.unique(hosts[hit]).tolist():
            rows = hit & (hosts == host)
            ts = batch.ts[rows]
            device = self.devices.get(host, host)
            if not self.throttle.allow(device, self.name, float(ts.max())):
                continue
            ev: dict[str, Scalar] = {
                "address": host, "flows": int(rows.sum()),
                "destinations": int(np.unique(batch.resp_h[rows]).shape[0]),
                "ports": int(np.unique(batch.resp_p[rows]).shape[0]),
            }
            ev.update(self._evidence(batch, rows))
            ev.update(evidence or {})
            out.append(Alert.create(device, self.name, float(score[rows].max()), self.severity,
                                    (float(ts.min()), float(ts.max())), ev))
        return out

    def _evidence(self, batch: FlowBatch, rows: BoolArray) -> dict[str, Scalar]:
        return {}


def _column(features: FeatureMatrix, names: tuple[str, ...], name: str) -> npt.NDArray[np.float64]:
    return features.values[:, names.index(name)]


class ScanFanOutRule(FlowRule):
    """A host contacting many destinations or ports it never used, within seconds (scanning, worms).

    Fires when the damped count of new destinations or of new ports (10 s
    half-life: roughly the last 15 s) reaches ``min_new``.
    """

    name = "scan_fanout"
    severity = Severity.HIGH

    def __init__(self, names: tuple[str, ...], min_new: float = 20.0, half_life: str = "10s",
                 devices: Mapping[str, str] | None = None, realert_s: float = 300.0) -> None:
        super().__init__(devices, realert_s)
        self.names = names
        self.min_new = min_new
        self.columns = (f"new_dst@{half_life}", f"new_port@{half_life}")

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        new = np.maximum(np.expm1(_column(features, self.names, self.columns[0])),
                         np.expm1(_column(features, self.names, self.columns[1])))
        return self._alerts(batch, new >= self.min_new, new, {"min_new": self.min_new})


class _Baseline(FlowRule):
    """A per-host set of keys learned from benign traffic (bounded per host).

    Vectorised per batch: rows are grouped by host (``np.unique``), so the
    Python work is per host in the batch, not per flow; a host's keys are
    taken in order of first appearance, so the bounded set holds the same keys
    a flow-by-flow pass would (tested against one).
    """

    max_keys_per_host = 1024
    min_flows = 20

    def __init__(self, devices: Mapping[str, str] | None = None, realert_s: float = 300.0) -> None:
        super().__init__(devices, realert_s)
        self.known: dict[str, set[Key]] = {}
        self.flows: dict[str, int] = {}
        self._arrays: dict[str, npt.NDArray[Any]] = {}

    def _keys(self, batch: FlowBatch) -> npt.NDArray[Any]:
        """One key per flow (an integer or string array)."""
        raise TypeError(f"{type(self).__name__} must define _keys()")

    def learn(self, batch: FlowBatch, features: FeatureMatrix) -> None:
        if len(batch) == 0:
            return
        keys = self._keys(batch)
        hosts, inverse = np.unique(batch.orig_h, return_inverse=True)
        order = np.argsort(inverse, kind="stable")  # rows grouped by host, in arrival order within a host
        bounds = np.searchsorted(inverse[order], np.arange(len(hosts) + 1))
        for j, host in enumerate(hosts.tolist()):
            rows = order[bounds[j]:bounds[j + 1]]
            self.flows[host] = self.flows.get(host, 0) + len(rows)
            known = self.known.setdefault(host, set())
            self._arrays.pop(host, None)
            if len(known) >= self.max_keys_per_host:
                continue
            uniq, first = np.unique(keys[rows], return_index=True)
            for key in uniq[np.argsort(first, kind="stable")].tolist():
                if len(known) >= self.max_keys_per_host:
                    break
                known.add(key)

    def forget(self, hosts: set[str]) -> None:
        for host in hosts:
            self.known.pop(host, None)
            self.flows.pop(host, None)
            self._arrays.pop(host, None)

    def _known_array(self, host: str, like: npt.NDArray[Any]) -> npt.NDArray[Any]:
        arr = self._arrays.get(host)
        if arr is None:
            arr = self._arrays[host] = np.array(sorted(self.known.get(host, ())), dtype=like.dtype)
        return arr

    def _unknown(self, batch: FlowBatch) -> BoolArray:
        out = np.zeros(len(batch), dtype=bool)
        if len(batch) == 0:
            return out
        keys = self._keys(batch)
        hosts, inverse = np.unique(batch.orig_h, return_inverse=True)
        for j, host in enumerate(hosts.tolist()):
            if self.flows.get(host, 0) >= self.min_flows:
                rows = inverse == j
                out[rows] = ~np.isin(keys[rows], self._known_array(host, keys))
        return out

    def _unlearned(self, batch: FlowBatch) -> BoolArray:
        """Flows from hosts with fewer than ``min_flows`` learned flows (no baseline to judge them by)."""
        hosts, inverse = np.unique(batch.orig_h, return_inverse=True)
        few = np.array([self.flows.get(h, 0) < self.min_flows for h in hosts.tolist()], dtype=bool)
        out: BoolArray = few[inverse] if len(batch) else np.zeros(0, dtype=bool)
        return out


class NewPortRule(_Baseline):
    """A device using a (protocol, destination port) absent from its benign baseline."""

    name = "new_port"
    severity = Severity.LOW

    def _keys(self, batch: FlowBatch) -> npt.NDArray[Any]:
        """``protocol << 16 | port``: one integer per (protocol, destination port)."""
        return (batch.proto.astype(np.int64) << 16) | batch.resp_p.astype(np.int64)

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        hit = self._unknown(batch)
        return self._alerts(batch, hit, hit.astype(np.float64))

    def _evidence(self, batch: FlowBatch, rows: BoolArray) -> dict[str, Scalar]:
        pairs = sorted({(PROTOCOLS[int(p)], int(q)) for p, q in zip(batch.proto[rows], batch.resp_p[rows],
                                                                     strict=True)})
        return {"new_ports": ",".join(f"{p}/{q}" for p, q in pairs[:8])}


class BeaconRule(_Baseline):
    """Timer-driven connections to a destination outside the device's baseline (command and control).

    Fires when a channel has at least ``min_flows_channel`` damped flows and
    the coefficient of variation of its inter-arrival times is at most ``max_cv``.
    """

    name = "beaconing"
    severity = Severity.HIGH

    def __init__(self, names: tuple[str, ...], max_cv: float = 0.1, min_flows_channel: float = 6.0,
                 devices: Mapping[str, str] | None = None, realert_s: float = 300.0) -> None:
        super().__init__(devices, realert_s)
        self.names = names
        self.max_cv = max_cv
        self.min_rate = float(np.log1p(min_flows_channel))

    def _keys(self, batch: FlowBatch) -> npt.NDArray[Any]:
        return batch.resp_h

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        cv = _column(features, self.names, "channel_iat_cv")
        hit = (_column(features, self.names, "channel_rate") >= self.min_rate) & (cv <= self.max_cv)
        if hit.any():
            hit &= self._unknown(batch) | self._unlearned(batch)
        period = np.expm1(_column(features, self.names, "channel_iat_mean"))
        alerts = self._alerts(batch, hit, 1.0 - cv)
        for k, alert in enumerate(alerts):
            rows = hit & (batch.orig_h == dict(alert.evidence)["address"])
            ev = dict(alert.evidence)
            ev.update({"period_s": round(float(np.median(period[rows])), 3),
                       "iat_cv": round(float(cv[rows].min()), 4), "peer": str(batch.resp_h[rows][-1])})
            alerts[k] = Alert.create(alert.device, alert.detector, alert.score, alert.severity,
                                     (alert.window_start_us / 1e6, alert.window_end_us / 1e6), ev)
        return alerts


class KnownBadRule(FlowRule):
    """Traffic to or from an address in a threat feed."""

    name = "known_bad_address"
    severity = Severity.CRITICAL

    def __init__(self, feed: ThreatFeed, devices: Mapping[str, str] | None = None,
                 realert_s: float = 300.0) -> None:
        super().__init__(devices, realert_s)
        self.feed = feed

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        addresses = np.unique(np.concatenate([batch.orig_h, batch.resp_h]))
        bad = [a for a in addresses.tolist() if self.feed.match(a) is not None]
        if not bad:
            return []
        bad_arr = np.array(bad, dtype=np.str_)
        hit_dst = np.isin(batch.resp_h, bad_arr)
        hit_src = np.isin(batch.orig_h, bad_arr) & ~hit_dst
        ones = np.ones(len(batch))
        out = self._alerts(batch, hit_dst, ones, {"feed": self.feed.name, "direction": "to"})
        out += self._alerts(batch, hit_src, ones, {"feed": self.feed.name, "direction": "from"}, host_column="resp_h")
        return out

    def _evidence(self, batch: FlowBatch, rows: BoolArray) -> dict[str, Scalar]:
        peers = sorted(set(batch.resp_h[rows].tolist()) | set(batch.orig_h[rows].tolist()))
        return {"peers": ",".join(p for p in peers if self.feed.match(p) is not None)[:120]}
