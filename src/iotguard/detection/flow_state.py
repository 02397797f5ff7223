"""One host's flow-monitor state as strict canonical CBOR, to share it between hub processes (ADR 0752).

A host's state is everything the flow detector keeps about one address:
its damped per-host and inbound sums and times (the
:class:`~iotguard.detection.features.FeatureExtractor` row), its channels
(destination address, six numbers each) and ports, the new-port,
beaconing and new-country baselines learned for it (version 2; a version 1
row, written before the new-country rule, is read with that baseline
empty; a detector without a country database carries the stored one
through unchanged), when each detector last alerted on its
device, and whether it is barred from learning (the learning window
excluded it, or a rule flagged it later before it had a judged baseline,
ADR 0709). :class:`HostStates`
puts the stored rows of a batch's hosts into a detector whose per-host
state was reset, and after the batch exports every one of them again: a
batch then computes exactly what one detector holding every host's state
would. Channels to destinations outside the batch are not touched by it and
are carried through unchanged.

Arrays travel as little-endian ``float64`` byte strings of an exact length,
sets as sorted distinct lists, every count and size bounded (at most
:data:`MAX_HOST_STATE_BYTES`); never pickle. A row that does not parse
strictly is refused with a ``detector_state_*`` reason code and the host
starts afresh.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2
import numpy as np
import numpy.typing as npt

from iotguard.detection._cbor import decode_canonical_map, float64_array
from iotguard.detection.flows import FlowBatch
from iotguard.detection.geo import NewCountryRule
from iotguard.detection.pipeline import FlowDetector
from iotguard.detection.rules import BeaconRule, NewPortRule, Throttle
from iotguard.errors import MalformedError

__all__ = ["HOST_STATE_VERSION", "MAX_HOST_STATE_BYTES", "MAX_STORED_PAIRS", "HostStates"]

#: Largest stored state of one host.
MAX_HOST_STATE_BYTES: Final = 128 * 1024
#: Channels and ports stored per host at most (the extractor's ``max_pairs_per_host`` if lower): with 64
#: character addresses and full rule baselines a row stays under :data:`MAX_HOST_STATE_BYTES`.
MAX_STORED_PAIRS: Final = 512
#: Version 2 (session 16, ADR 0717) adds the new-country baseline; version 1 rows are still read.
HOST_STATE_VERSION: Final = 2
_KEYS_V1: Final = frozenset({"v", "sums", "in_sums", "times", "dsts", "channels", "ports", "port_times",
                             "known_ports", "port_flows", "known_peers", "peer_flows", "alerted", "excluded"})
_KEYS: Final = _KEYS_V1 | {"known_countries", "country_flows"}
_DETECTORS: Final = frozenset({"scan_fanout", "new_port", "beaconing", "known_bad_address", "inbound_probing",
                               "new_country", "autoencoder"})
_HOST_SUMS, _IN_SUMS, _CHANNEL_WIDTH = 7, 3, 6
_MAX_ADDRESS = 64
_MAX_COUNT = 1 << 53


@dataclass
class _Row:
    sums: npt.NDArray[np.float64]
    in_sums: npt.NDArray[np.float64]
    times: npt.NDArray[np.float64]  # time of the sums, of the inbound sums, first seen, last seen
    dsts: list[str]
    channels: npt.NDArray[np.float64]
    ports: npt.NDArray[np.int64]
    port_times: npt.NDArray[np.float64]
    known_ports: list[int]
    port_flows: int
    known_peers: list[str]
    peer_flows: int
    alerted: dict[str, float]
    excluded: bool
    known_countries: list[str]
    country_flows: int


def _f64(a: npt.NDArray[Any]) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


def _fail(what: str) -> MalformedError:
    return MalformedError(f"flow host state: {what}", code="detector_state_bad_value")


def _array(value: Any, shape: tuple[int, ...], what: str) -> npt.NDArray[np.float64]:
    return float64_array(value, shape, f"flow host state: {what}")


def _addresses(value: Any, limit: int, what: str, *, ordered: bool) -> list[str]:
    if not isinstance(value, list) or len(value) > limit or not all(
            isinstance(v, str) and 0 < len(v) <= _MAX_ADDRESS and v.isprintable() and " " not in v for v in value) \
            or len(set(value)) != len(value) or (ordered and value != sorted(value)):
        raise _fail(f"{what} must be at most {limit} distinct addresses")
    return value


def _count(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < _MAX_COUNT:
        raise _fail(f"{what} out of range")
    return value


def _body(data: bytes) -> dict[str, Any]:
    """The stored map; a version 1 row (written before the new-country baseline) with that baseline empty."""
    try:
        return decode_canonical_map(data, max_bytes=MAX_HOST_STATE_BYTES, keys=_KEYS, version=HOST_STATE_VERSION,
                                    prefix="detector_state", what="flow host state")
    except MalformedError as exc:
        if exc.code not in ("detector_state_bad_keys", "detector_state_version"):
            raise
        try:
            body = decode_canonical_map(data, max_bytes=MAX_HOST_STATE_BYTES, keys=_KEYS_V1, version=1,
                                        prefix="detector_state", what="flow host state")
        except MalformedError:
            raise exc from None  # not a version 1 row either: the current version's reason
        return {**body, "known_countries": [], "country_flows": 0}


def _countries(value: Any, limit: int) -> list[str]:
    if not isinstance(value, list) or len(value) > limit or value != sorted(set(value)) or not all(
            isinstance(c, str) and (c == "" or (len(c) == 2 and c.isascii() and c.isupper())) for c in value):
        raise _fail("known countries must be sorted distinct country codes")
    return value


def _decode(data: bytes, rates: int, max_pairs: int, max_keys: int) -> _Row:
    body = _body(data)
    dsts = _addresses(body["dsts"], max_pairs, "channel destinations", ordered=False)
    ports = body["ports"]
    if not isinstance(ports, list) or len(ports) > max_pairs or len(set(ports)) != len(ports) or not all(
            type(p) is int and 0 <= p < 1 << 18 for p in ports):
        raise _fail("ports must be distinct (protocol, port) keys")
    known = body["known_ports"]
    if not isinstance(known, list) or len(known) > max_keys or known != sorted(set(known)) or not all(
            type(p) is int and 0 <= p < 1 << 18 for p in known):
        raise _fail("known ports must be sorted distinct (protocol, port) keys")
    alerted = body["alerted"]
    if not isinstance(alerted, dict) or not all(
            k in _DETECTORS and type(t) is float and math.isfinite(t) for k, t in alerted.items()):
        raise _fail("alerted must map detectors to times")
    if type(body["excluded"]) is not bool:
        raise _fail("excluded must be a boolean")
    return _Row(_array(body["sums"], (rates, _HOST_SUMS), "sums"),
                _array(body["in_sums"], (rates, _IN_SUMS), "in_sums"), _array(body["times"], (4,), "times"), dsts,
                _array(body["channels"], (len(dsts), _CHANNEL_WIDTH), "channels"),
                np.array(ports, dtype=np.int64), _array(body["port_times"], (len(ports),), "port_times"),
                known, _count(body["port_flows"], "port flows"),
                _addresses(body["known_peers"], max_keys, "known peers", ordered=True),
                _count(body["peer_flows"], "peer flows"), dict(alerted), body["excluded"],
                _countries(body["known_countries"], max_keys), _count(body["country_flows"], "country flows"))


def _pairs(detector: FlowDetector) -> int:
    return min(detector.extractor.config.max_pairs_per_host, MAX_STORED_PAIRS)


def _rules(detector: FlowDetector) -> tuple[NewPortRule, BeaconRule, list[Throttle]]:
    ports = next(r for r in detector.rules if isinstance(r, NewPortRule))
    peers = next(r for r in detector.rules if isinstance(r, BeaconRule))
    return ports, peers, [r.throttle for r in detector.rules] + [detector.throttle]


def _country_rule(detector: FlowDetector) -> NewCountryRule | None:
    """The new-country rule, if the detector has a country database."""
    return next((r for r in detector.rules if isinstance(r, NewCountryRule)), None)


class HostStates:
    """The stored state of a batch's hosts, put into a detector whose per-host state was just reset.

    Args:
        detector: After :meth:`~iotguard.detection.pipeline.FlowDetector.reset_hosts`.
        batch: The batch about to be observed.
        stored: Host address -> stored state, for the batch's hosts that have one.

    Raises:
        MalformedError: ``flow_batch_too_many_hosts`` (more hosts than the extractor holds).
    """

    def __init__(self, detector: FlowDetector, batch: FlowBatch, stored: Mapping[str, bytes]) -> None:
        self.detector = detector
        ex = detector.extractor
        names = np.concatenate([batch.orig_h, batch.resp_h])
        self.hosts: list[str] = sorted(set(names.tolist()))
        if len(self.hosts) > ex.config.max_hosts:
            raise MalformedError("batch names more hosts than max_hosts", code="flow_batch_too_many_hosts")
        #: Hosts whose stored state did not parse (reason code), started afresh.
        self.unreadable: dict[str, str] = {}
        self._carried: dict[str, tuple[list[str], npt.NDArray[np.float64]]] = {}
        #: Stored country baselines, kept as they are by a detector without a country database.
        self._countries: dict[str, tuple[list[str], int]] = {}
        rows: dict[str, _Row] = {}
        rules = _rules(detector)
        for host in self.hosts:
            if host in stored:
                try:
                    rows[host] = _decode(stored[host], len(ex.config.half_lives_s), _pairs(detector),
                                         rules[0].max_keys_per_host)
                except MalformedError as exc:
                    self.unreadable[host] = exc.code
        # Stored hosts first (with their own first-seen times), then the batch's new hosts exactly as the
        # extractor would allocate them itself.
        for host, row in rows.items():
            i = int(ex._allocate([host], float(row.times[3]))[0])
            ex._sums[i], ex._in_sums[i] = row.sums, row.in_sums
            ex._t_sums[i], ex._t_in[i], ex._first[i], ex._last[i] = row.times.tolist()
        ex._host_ids(names, np.concatenate([batch.ts, batch.ts]))
        self._ids: dict[str, int] = dict(zip(self.hosts, ex._held_ids(self.hosts).tolist(), strict=True))
        tables: tuple[list[npt.NDArray[Any]], ...] = ([], [], [], [])
        # The stored channels' destinations looked up at once (-1: not in this batch, carried through).
        held = ex._held_ids([d for row in rows.values() for d in row.dsts])
        at = 0
        for host, row in rows.items():
            self._load(host, row, rules, tables, held[at:at + len(row.dsts)])
            at += len(row.dsts)
        if tables[0]:  # one insert per table: the per-call cost of a table insert dominates small rows
            ex._channels.put(np.concatenate(tables[0]), np.concatenate(tables[1]))
        if tables[2]:
            ex._ports.put(np.concatenate(tables[2]), np.concatenate(tables[3]))

    def _load(self, host: str, row: _Row, rules: tuple[NewPortRule, BeaconRule, list[Throttle]],
              tables: tuple[list[npt.NDArray[Any]], ...], known: npt.NDArray[np.int64]) -> None:
        detector = self.detector
        i = self._ids[host]
        here = known >= 0
        if here.any():
            dst = known[here]
            tables[0].append((i << 32) | dst)
            tables[1].append(row.channels[here])
        if not here.all():
            self._carried[host] = (_compress(row.dsts, ~here), row.channels[~here])
        if row.ports.shape[0]:
            tables[2].append((i << 18) | row.ports)
            tables[3].append(row.port_times[:, None])
        ports, peers, throttles = rules
        if row.port_flows or row.known_ports:
            ports.restore(host, set(row.known_ports), row.port_flows)
        if row.peer_flows or row.known_peers:
            peers.restore(host, set(row.known_peers), row.peer_flows)
        countries = _country_rule(detector)
        if countries is None:
            self._countries[host] = (row.known_countries, row.country_flows)
        elif row.country_flows or row.known_countries:
            countries.restore(host, set(row.known_countries), row.country_flows)
        device = detector.devices.get(host, host)
        for throttle in throttles:  # two addresses of one device: the later alert of each detector counts
            now = throttle.last_of(device)
            throttle.restore(device, {d: max(t, now.get(d, t)) for d, t in row.alerted.items()})
        if row.excluded:  # flagged while it had no judged baseline: its rule baselines are empty and stay so
            ports.forget({host})
            peers.forget({host})
            if countries is not None:
                countries.forget({host})
            if not detector.fitted:
                detector.excluded.add(host)

    def export(self) -> dict[str, bytes]:
        """Every host of the batch's state after the batch, as canonical CBOR."""
        ex, detector = self.detector.extractor, self.detector
        cap = _pairs(detector)
        c_keys, c_values = ex._channels.items()
        p_keys, p_values = ex._ports.items()
        ports, peers, throttles = _rules(detector)
        countries = _country_rule(detector)
        out: dict[str, bytes] = {}
        for host in self.hosts:
            i = self._ids[host]
            mine = (c_keys >> 32) == i
            dsts = ex._host_names(c_keys[mine] & 0xFFFFFFFF)
            values = c_values[mine]
            carried = self._carried.get(host)
            if carried is not None:
                dsts, values = dsts + carried[0], np.concatenate([values, carried[1]])
            if len(dsts) > cap:  # the most recently used, as the extractor's own trim keeps
                keep = np.sort(np.argsort(-values[:, 0], kind="stable")[:cap])
                dsts, values = [dsts[k] for k in keep.tolist()], values[keep]
            p_mine = (p_keys >> 18) == i
            p_low, p_last = p_keys[p_mine] & ((1 << 18) - 1), p_values[p_mine, 0]
            if p_low.shape[0] > cap:
                keep = np.sort(np.argsort(-p_last, kind="stable")[:cap])
                p_low, p_last = p_low[keep], p_last[keep]
            device = detector.devices.get(host, host)
            alerted: dict[str, float] = {}
            for throttle in throttles:  # each holds every detector's times; its own detector's are the newest
                for d, t in throttle.last_of(device).items():
                    alerted[d] = max(t, alerted.get(d, t))
            if countries is None:
                known_countries, country_flows = self._countries.get(host, ([], 0))
            else:
                known_countries = sorted(str(c) for c in countries.known.get(host, ()))
                country_flows = countries.flows.get(host, 0)
            out[host] = bytes(cbor2.dumps({
                "v": HOST_STATE_VERSION, "sums": _f64(ex._sums[i]), "in_sums": _f64(ex._in_sums[i]),
                "times": _f64(np.array([ex._t_sums[i], ex._t_in[i], ex._first[i], ex._last[i]])),
                "dsts": dsts, "channels": _f64(values), "ports": p_low.tolist(), "port_times": _f64(p_last),
                "known_ports": sorted(ports.known.get(host, ())), "port_flows": ports.flows.get(host, 0),
                "known_peers": sorted(peers.known.get(host, ())), "peer_flows": peers.flows.get(host, 0),
                "known_countries": known_countries, "country_flows": country_flows, "alerted": alerted,
                "excluded": host in detector.excluded or host in ports.barred or host in peers.barred}, canonical=True))
        return out


def _compress(items: Iterable[str], mask: npt.NDArray[np.bool_]) -> list[str]:
    """The items where ``mask`` is true."""
    return [item for item, keep in zip(items, mask.tolist(), strict=True) if keep]
