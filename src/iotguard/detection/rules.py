"""Rules for what needs no learning: scan fan-out, new destination ports,
beaconing, traffic to known-bad addresses.

Each flow rule reads a batch of flows and its features and decides, per
flow, whether its condition holds (:meth:`FlowRule.hits`); it returns at most
one :class:`~iotguard.detection.alert.Alert` per host per batch over those
flows, with the evidence that triggered it; a host that keeps triggering a
rule is alerted again only after ``realert_s`` (bounded memory of recent
alerts). The evaluation harness grades the per-flow decisions.
Behaviour rules over hub events (credential guessing, cloned devices) live
in :mod:`iotguard.detection.behaviour`.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from iotguard.detection.alert import Alert, Scalar, Severity
from iotguard.detection.features import FeatureMatrix
from iotguard.detection.feed import ThreatFeed
from iotguard.detection.flows import PROTOCOLS, FlowBatch, failed_attempts

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
    #: Whether the rule judges a host against a baseline learned for it (new ports, beaconing peers).
    keeps_baseline = False

    def __init__(self, devices: Mapping[str, str] | None = None, realert_s: float = 300.0) -> None:
        self.devices = dict(devices or {})
        self.throttle = Throttle(realert_s)

    def learn(self, batch: FlowBatch, features: FeatureMatrix) -> None:
        """Learn the benign baseline (rules without one ignore this)."""

    def forget(self, hosts: set[str]) -> None:
        """Drop what was learned about ``hosts`` (flagged while learning; rules without a baseline ignore this)."""

    def bar(self, hosts: set[str]) -> None:
        """Never learn ``hosts`` that have no judged baseline yet (flagged after the learning window)."""

    def learn_unjudged(self, batch: FlowBatch, features: FeatureMatrix) -> None:
        """After the learning window: learn from the flows of hosts not judged yet (rules without a baseline ignore
        this)."""

    def hits(self, batch: FlowBatch, features: FeatureMatrix) -> BoolArray:
        """The flows of this batch on which the rule's condition holds (before throttling)."""
        raise TypeError(f"{type(self).__name__} must define hits()")

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


#: Up to this many hosts with a baseline, a batch's rows are matched to them by one comparison per host.
_FEW_HOSTS = 4
#: Up to this many devices and site hosts, the ones still learning are looked for in a batch, not each flow's host.
_FEW_INSIDE = 16


@functools.cache
def _kernel() -> ModuleType | None:
    """The rules' compiled tests (:mod:`._compiled_rules`), compiled once per process; ``None`` without Numba."""
    try:
        module = importlib.import_module("iotguard.detection._compiled_rules")
    except ImportError:
        return None
    codes = np.zeros((1, 1), dtype=np.uint32)
    module.index_among(codes, codes)  # compiled now, not inside the first batch judged
    return module


def _codes(hosts: npt.NDArray[np.str_]) -> npt.NDArray[np.uint32]:
    """The code points of ``hosts`` as NumPy stores them: a row each, zero-padded to the array's width."""
    width = hosts.dtype.itemsize // 4
    if width == 0:
        return np.zeros((hosts.shape[0], 1), dtype=np.uint32)
    codes: npt.NDArray[np.uint32] = np.ascontiguousarray(hosts).view(np.uint32).reshape(hosts.shape[0], width)
    return codes


def _index_among(hosts: npt.NDArray[np.str_], targets: npt.NDArray[np.str_],
                 compiled: bool = True) -> npt.NDArray[np.intp]:
    """Per row of ``hosts``, the index of the one of ``targets`` (a few distinct addresses) equal to it, or -1
    (with ``compiled``, in the compiled pass when Numba is installed)."""
    kernel = _kernel() if compiled else None
    if kernel is None or hosts.dtype.kind != "U" or targets.dtype.kind != "U":
        return _index_among_numpy(hosts, targets)
    out: npt.NDArray[np.intp] = kernel.index_among(_codes(hosts), _codes(targets))
    return out


def _index_among_numpy(hosts: npt.NDArray[np.str_], targets: npt.NDArray[np.str_]) -> npt.NDArray[np.intp]:
    """:func:`_index_among` by one NumPy comparison over ``hosts`` per target (the compiled pass's reference)."""
    out: npt.NDArray[np.intp] = np.full(hosts.shape[0], -1, dtype=np.intp)
    for j, host in enumerate(targets.tolist()):
        out[hosts == host] = j
    return out


def _by_host(hosts: npt.NDArray[np.str_], keys: npt.NDArray[Any]) -> Iterator[tuple[str, list[Key]]]:
    """Each host of ``hosts`` with the keys of its rows as Python values, in arrival order (one sort, then no
    NumPy call per host)."""
    names, inverse = np.unique(hosts, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # rows grouped by host, in arrival order within a host
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1)).tolist()
    grouped = keys[order].tolist()
    for j, host in enumerate(names.tolist()):
        yield host, grouped[bounds[j]:bounds[j + 1]]


def _members(keys: npt.NDArray[Any], known: npt.NDArray[Any]) -> BoolArray:
    """Which ``keys`` are in the sorted array ``known`` (a binary search each; ``np.isin`` without its set-up)."""
    if known.shape[0] == 0:
        return np.zeros(keys.shape[0], dtype=bool)
    at = np.minimum(np.searchsorted(known, keys), known.shape[0] - 1)
    out: BoolArray = known[at] == keys
    return out


def _column(features: FeatureMatrix, names: tuple[str, ...], name: str) -> npt.NDArray[np.float64]:
    return features.values[:, names.index(name)]


class ScanFanOutRule(FlowRule):
    """A host trying many destinations or ports it never used, within seconds, and failing (scanning, worms).

    Holds on a flow that is a failed connection attempt (Zeek's scan policy
    counts only those: :func:`~iotguard.detection.flows.failed_attempts`)
    while the damped count of its host's new destinations or new ports (10 s
    half-life: roughly the last 15 s) reaches ``min_new``. A burst of
    answered connections (a browser opening a page's twenty hosts) is not a
    scan (ADR 0715).
    """

    name = "scan_fanout"
    severity = Severity.HIGH

    def __init__(self, names: tuple[str, ...], min_new: float = 20.0, half_life: str = "10s",
                 devices: Mapping[str, str] | None = None, realert_s: float = 300.0) -> None:
        super().__init__(devices, realert_s)
        self.names = names
        self.min_new = min_new
        self.columns = (f"new_dst@{half_life}", f"new_port@{half_life}")

    def _new(self, features: FeatureMatrix) -> npt.NDArray[np.float64]:
        # expm1 is increasing, so the larger damped count is expm1 of the larger column (one expm1, not two).
        return np.expm1(np.maximum(_column(features, self.names, self.columns[0]),
                                   _column(features, self.names, self.columns[1])))

    def _hits(self, batch: FlowBatch, features: FeatureMatrix) -> tuple[BoolArray, npt.NDArray[np.float64]]:
        new = self._new(features)
        hit: BoolArray = new >= self.min_new
        if hit.any():
            hit &= failed_attempts(batch)
        return hit, new

    def hits(self, batch: FlowBatch, features: FeatureMatrix) -> BoolArray:
        return self._hits(batch, features)[0]

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        hit, new = self._hits(batch, features)
        return self._alerts(batch, hit, new, {"min_new": self.min_new})


class _Baseline(FlowRule):
    """A per-host set of keys learned from benign traffic (bounded per host).

    Vectorised per batch: rows are grouped by host (``np.unique``), so the
    Python work is per host in the batch, not per flow; a host's keys are
    taken in order of first appearance, so the bounded set holds the same keys
    a flow-by-flow pass would (tested against one). Judging a batch looks
    each flow's host up in the sorted array of hosts that have a baseline
    (binary search; the array is rebuilt after learning, forgetting or
    :meth:`restore`) and groups the rows of those hosts by that position, so
    the batch's addresses are never sorted.
    """

    keeps_baseline = True
    max_keys_per_host = 1024
    min_flows = 20

    def __init__(self, devices: Mapping[str, str] | None = None, realert_s: float = 300.0,
                 local_hosts: Collection[str] = (), *, compiled: bool = True) -> None:
        super().__init__(devices, realert_s)
        #: Match hosts in the compiled pass (when Numba is installed); the hub passes its
        #: ``detection_compiled`` setting, so its first flow report never waits for a compile (ADR 0705).
        self.compiled = compiled
        self.known: dict[str, set[Key]] = {}
        self.flows: dict[str, int] = {}
        #: Addresses that go on learning after the learning window (:meth:`learn_unjudged`): the fleet's
        #: devices and the site's other hosts.
        self.inside = frozenset(self.devices) | frozenset(local_hosts)
        #: Hosts never learned as normal: a rule that needs no baseline flagged them before they had one judged.
        self.barred: set[str] = set()
        self._arrays: dict[str, npt.NDArray[Any]] = {}
        self._judged: npt.NDArray[np.str_] | None = None
        if compiled:
            _kernel()  # compiled here, not inside the first batch judged

    def _keys(self, batch: FlowBatch) -> npt.NDArray[Any]:
        """One key per flow (an integer or string array)."""
        raise TypeError(f"{type(self).__name__} must define _keys()")

    def learn(self, batch: FlowBatch, features: FeatureMatrix) -> None:
        if len(batch) == 0:
            return
        for host, keys in _by_host(batch.orig_h, self._keys(batch)):
            self._add(host, keys)

    def _add(self, host: str, keys: list[Key]) -> None:
        """Learn one host's flows (their keys, in arrival order)."""
        before = self.flows.get(host, 0)
        self.flows[host] = before + len(keys)
        if before < self.min_flows <= before + len(keys):
            self._judged = None
        known = self.known.setdefault(host, set())
        self._arrays.pop(host, None)
        if len(known) + len(keys) <= self.max_keys_per_host:  # all fit: the order of first appearance is moot
            known.update(keys)
            return
        for key in dict.fromkeys(keys):  # in order of first appearance
            if len(known) >= self.max_keys_per_host:
                break
            known.add(key)

    def forget(self, hosts: set[str]) -> None:
        """Drop what was learned about ``hosts`` and never learn them again (flagged in the learning window)."""
        for host in hosts:
            self.known.pop(host, None)
            if self.flows.pop(host, 0) >= self.min_flows:
                self._judged = None
            self._arrays.pop(host, None)
        self.barred |= hosts

    def bar(self, hosts: set[str]) -> None:
        """:meth:`forget` those of ``hosts`` that have no judged baseline yet; judged ones keep theirs."""
        self.forget({h for h in hosts if self.flows.get(h, 0) < self.min_flows})

    def learns(self, host: str) -> bool:
        """Whether ``host`` goes on learning while it has no judged baseline: inside the site and not barred."""
        return host in self.inside and host not in self.barred

    def learn_unjudged(self, batch: FlowBatch, features: FeatureMatrix) -> None:
        """Learn each host that :meth:`learns` and has no judged baseline (fewer than ``min_flows`` learned
        flows) from its first flows in this batch, up to ``min_flows``; as a flow-by-flow pass would (tested)."""
        if not self.inside or len(batch) == 0:
            return
        if len(self.inside) <= _FEW_INSIDE:  # a site of a few hosts (an evaluated log): usually all judged
            learners = [h for h in self.inside if self.flows.get(h, 0) < self.min_flows and self.learns(h)]
            if not learners:
                return
            rows = np.flatnonzero(_index_among(batch.orig_h, np.array(learners, dtype=np.str_), self.compiled) >= 0)
        else:
            rows = np.flatnonzero(self._judged_index(batch) < 0)
            if rows.shape[0] == 0:
                return
            # Most unjudged flows are usually from outside the site: sift them out with a set, not a sort.
            learners = [h for h in set(batch.orig_h[rows].tolist()) if self.learns(h)]
            if not learners:
                return
            rows = rows[np.isin(batch.orig_h[rows], np.array(learners, dtype=np.str_))]
        if rows.shape[0] == 0:
            return
        for host, keys in _by_host(batch.orig_h[rows], self._keys(batch)[rows]):
            self._add(host, keys[:max(0, self.min_flows - self.flows.get(host, 0))])

    def restore(self, host: str, known: set[Key], flows: int) -> None:
        """Put back a host's stored baseline: its keys and how many flows it was learned from."""
        self._judged = None
        self.known[host], self.flows[host] = known, flows
        self._arrays.pop(host, None)

    def _judged_hosts(self) -> npt.NDArray[np.str_]:
        """Hosts with at least ``min_flows`` learned flows (the ones judged against a baseline), sorted."""
        if self._judged is None:
            self._judged = np.array(sorted(h for h, n in self.flows.items() if n >= self.min_flows), dtype=np.str_)
        return self._judged

    def _judged_index(self, batch: FlowBatch) -> npt.NDArray[np.intp]:
        """Per flow, its host's place among the hosts with a baseline (:meth:`_judged_hosts`); -1 for others."""
        judged = self._judged_hosts()
        out: npt.NDArray[np.intp] = np.full(len(batch), -1, dtype=np.intp)
        if judged.shape[0] == 0 or len(batch) == 0:
            return out
        if judged.shape[0] <= _FEW_HOSTS:  # a comparison per host is cheaper than a search per flow
            return _index_among(batch.orig_h, judged, self.compiled)
        at = np.minimum(np.searchsorted(judged, batch.orig_h), judged.shape[0] - 1)
        out = np.where(judged[at] == batch.orig_h, at, -1)
        return out

    def _known_array(self, host: str, like: npt.NDArray[Any]) -> npt.NDArray[Any]:
        arr = self._arrays.get(host)
        if arr is None:
            # Strings take their own width: the batch's width would cut longer known addresses, and the cut
            # array, cached, would make them unknown in every later batch.
            dtype = np.str_ if like.dtype.kind == "U" else like.dtype
            arr = self._arrays[host] = np.array(sorted(self.known.get(host, ())), dtype=dtype)
        return arr

    def _unknown(self, batch: FlowBatch, index: npt.NDArray[np.intp] | None = None,
                 keys: npt.NDArray[Any] | None = None) -> BoolArray:
        """Flows of hosts with a baseline whose key is not in it (``index``: :meth:`_judged_index`, ``keys``:
        :meth:`_keys`, if known)."""
        out = np.zeros(len(batch), dtype=bool)
        if index is None:
            index = self._judged_index(batch)
        picked = np.flatnonzero(index >= 0)
        if picked.shape[0] == 0:
            return out
        keys = (self._keys(batch) if keys is None else keys)[picked]
        owner = index[picked]
        judged = self._judged_hosts()
        if owner[0] == owner[-1] and (owner == owner[0]).all():  # one host with a baseline here (the common case)
            out[picked] = ~_members(keys, self._known_array(str(judged[owner[0]]), keys))
            return out
        order = np.argsort(owner, kind="stable")
        grouped = owner[order]
        first = np.ones(grouped.shape[0], dtype=bool)  # not np.r_, whose index machinery costs more than the rest
        first[1:] = grouped[1:] != grouped[:-1]
        starts = np.flatnonzero(first)
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), order.shape[0]], strict=True):
            rows = order[a:b]
            out[picked[rows]] = ~_members(keys[rows], self._known_array(str(judged[grouped[a]]), keys))
        return out


def port_keys(batch: FlowBatch) -> npt.NDArray[np.int64]:
    """``protocol << 16 | port``: one integer per flow's (protocol, destination port)."""
    out: npt.NDArray[np.int64] = (batch.proto.astype(np.int64) << 16) | batch.resp_p.astype(np.int64)
    return out


class NewPortRule(_Baseline):
    """A device using a (protocol, destination port) absent from its benign baseline and from its model's.

    Args:
        devices: Address -> device id of fleet devices.
        realert_s: Quiet time per host after an alert.
        local_hosts: Site hosts besides the devices (they go on learning after the window).
        models: Device id -> device model.
        model_ports: Per device model, the keys several of its devices used in the learning window
            (:class:`~iotguard.detection.model_ports.ModelPorts`, ADR 0712): a device's rare benign
            exchange (a firmware check, NTP) that its own first flows missed is not new for it.
    """

    name = "new_port"
    severity = Severity.LOW

    def __init__(self, devices: Mapping[str, str] | None = None, realert_s: float = 300.0,
                 local_hosts: Collection[str] = (), models: Mapping[str, str] | None = None,
                 model_ports: Mapping[str, frozenset[int]] | None = None, *, compiled: bool = True) -> None:
        super().__init__(devices, realert_s, local_hosts, compiled=compiled)
        self.models = dict(models or {})
        self.model_ports = dict(model_ports or {})

    def _keys(self, batch: FlowBatch) -> npt.NDArray[Any]:
        return port_keys(batch)

    def hits(self, batch: FlowBatch, features: FeatureMatrix) -> BoolArray:
        all_keys = port_keys(batch)
        hit = self._unknown(batch, keys=all_keys)
        if self.model_ports and hit.any():  # hits are few: a look-up each
            rows = np.flatnonzero(hit)
            keys = all_keys[rows].tolist()
            for row, host, key in zip(rows.tolist(), batch.orig_h[rows].tolist(), keys, strict=True):
                ports = self.model_ports.get(self.models.get(self.devices.get(host, ""), ""))
                if ports is not None and key in ports:
                    hit[row] = False
        return hit

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        hit = self.hits(batch, features)
        return self._alerts(batch, hit, hit.astype(np.float64))

    def _evidence(self, batch: FlowBatch, rows: BoolArray) -> dict[str, Scalar]:
        pairs = sorted({(PROTOCOLS[int(p)], int(q)) for p, q in zip(batch.proto[rows], batch.resp_p[rows],
                                                                     strict=True)})
        return {"new_ports": ",".join(f"{p}/{q}" for p, q in pairs[:8])}


@functools.lru_cache(maxsize=65536)
def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``address`` parsed, or ``None`` if it is not an IP address (cached: batches repeat their addresses)."""
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


@functools.lru_cache(maxsize=65536)
def _group_address(address: str) -> bool:
    """Whether ``address`` names a group (multicast, or the IPv4 limited broadcast), not one peer (cached, as
    :func:`_ip` is: ``is_multicast`` is a network look-up per call, and a batch's peers repeat)."""
    ip = _ip(address)
    return ip is not None and (ip.is_multicast or address == "255.255.255.255")


class BeaconRule(_Baseline):
    """Timer-driven connections to a destination outside the device's baseline (command and control).

    Fires when a channel has at least ``min_flows_channel`` damped flows and
    the coefficient of variation of its inter-arrival times is at most ``max_cv``,
    to a single peer: flows to a multicast group or the limited broadcast
    address are left out, because no server answers a device through them and
    their control traffic is timer-driven by design (MLD and IGMP reports,
    RFC 3810 and 3376; mDNS announcements, RFC 6762).

    A host without a judged baseline (fewer than ``min_flows`` learned
    flows): with ``alert_unlearned`` (a rule used alone, never taught) any
    timer-driven channel of it is alerted. Without it (the hub's detector,
    which keeps learning such hosts after the learning window,
    :meth:`learn_unjudged`), a host that :meth:`learns` (a device or site
    host, not barred) is left alone until it has its baseline; others (outside
    the site, or barred) are alerted as before (ADR 0709).
    """

    name = "beaconing"
    severity = Severity.HIGH

    def __init__(self, names: tuple[str, ...], max_cv: float = 0.1, min_flows_channel: float = 6.0,
                 devices: Mapping[str, str] | None = None, realert_s: float = 300.0, *,
                 alert_unlearned: bool = True, local_hosts: Collection[str] = (), compiled: bool = True) -> None:
        super().__init__(devices, realert_s, local_hosts, compiled=compiled)
        self.names = names
        self.max_cv = max_cv
        self.min_rate = float(np.log1p(min_flows_channel))
        self.alert_unlearned = alert_unlearned

    def _keys(self, batch: FlowBatch) -> npt.NDArray[Any]:
        return batch.resp_h

    def hits(self, batch: FlowBatch, features: FeatureMatrix) -> BoolArray:
        cv = _column(features, self.names, "channel_iat_cv")
        hit: BoolArray = (_column(features, self.names, "channel_rate") >= self.min_rate) & (cv <= self.max_cv)
        if hit.any():
            index = self._judged_index(batch)
            unjudged = hit & (index < 0)
            if not self.alert_unlearned and unjudged.any():  # a host still learning is not judged yet
                hosts, inverse = np.unique(batch.orig_h[unjudged], return_inverse=True)
                unjudged[unjudged] = ~np.array([self.learns(h) for h in hosts.tolist()], dtype=bool)[inverse]
            hit &= self._unknown(batch, index) | unjudged
        if hit.any():
            rows = np.flatnonzero(hit)
            hit[rows[[_group_address(a) for a in batch.resp_h[rows].tolist()]]] = False
        return hit

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        cv = _column(features, self.names, "channel_iat_cv")
        hit = self.hits(batch, features)
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

    def _directions(self, batch: FlowBatch) -> tuple[BoolArray, BoolArray]:
        """Flows to a listed address, and flows from one (not also to one)."""
        addresses = np.unique(np.concatenate([batch.orig_h, batch.resp_h]))
        bad = [a for a in addresses.tolist() if self.feed.match(a) is not None]
        if not bad:
            none = np.zeros(len(batch), dtype=bool)
            return none, none
        bad_arr = np.array(bad, dtype=np.str_)
        hit_dst = np.isin(batch.resp_h, bad_arr)
        return hit_dst, np.isin(batch.orig_h, bad_arr) & ~hit_dst

    def hits(self, batch: FlowBatch, features: FeatureMatrix) -> BoolArray:
        hit_dst, hit_src = self._directions(batch)
        out: BoolArray = hit_dst | hit_src
        return out

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        hit_dst, hit_src = self._directions(batch)
        if not (hit_dst.any() or hit_src.any()):
            return []
        ones = np.ones(len(batch))
        out = self._alerts(batch, hit_dst, ones, {"feed": self.feed.name, "direction": "to"})
        out += self._alerts(batch, hit_src, ones, {"feed": self.feed.name, "direction": "from"}, host_column="resp_h")
        return out

    def _evidence(self, batch: FlowBatch, rows: BoolArray) -> dict[str, Scalar]:
        peers = sorted(set(batch.resp_h[rows].tolist()) | set(batch.orig_h[rows].tolist()))
        return {"peers": ",".join(p for p in peers if self.feed.match(p) is not None)[:120]}
