"""Incremental per-host and per-channel flow features, vectorised over batches.

In the spirit of Kitsune's AfterImage, every statistic is a *damped* sum:
a flow at time ``t_i`` contributes ``x_i * 2 ** (-(t - t_i) / half_life)``
at a later time ``t``, so the state of a host is a handful of numbers per
half-life and old behaviour fades instead of being stored. For each flow
the extractor updates the state of its originating host and of its channel
(originator, responder) and emits the statistics *including* that flow:

* the flow itself: duration, bytes and packets each way, byte ratio,
  no-reply / rejected / established, transport, service known, low port;
* per originating host, at each half-life (10 s, 1 min, 10 min by default):
  flow rate, mean and spread of bytes sent, bytes sent, the share and
  number of flows to destinations and to ports the host had not used
  before (fan-out), the share of unanswered flows; and the host's age (saturating at an hour);
* per channel: flow rate, mean inter-arrival time and its coefficient of
  variation (near 0 for a timer-driven beacon).

A batch is processed without a Python loop per flow: flows are grouped by
host (or channel) with one sort, and the damped sums of every group and
half-life are one parallel prefix scan of the linear recurrence
``S_k = decay_k * S_(k-1) + x_k`` over the whole batch.

With Numba installed (``pip install iotguard[accel]``) the same features
are computed by a compiled kernel (:mod:`._compiled`) in one pass over the
batch, each flow updating its hosts' and channel's sums in place; both
paths keep the same state, and this NumPy form stays the reference.

State is bounded: at most ``max_hosts`` hosts (the least recently seen are
evicted) and ``max_pairs_per_host`` channel and port entries per host.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from iotguard.detection._hosts import DictHostTable, HostTable, check_width
from iotguard.detection._tables import KeyTable, StateTable
from iotguard.detection.flows import CONN_STATES, ESTABLISHED_STATES, PROTOCOLS, REJECTED_STATES, Flow, FlowBatch
from iotguard.errors import ConfigError, MalformedError

__all__ = ["FeatureConfig", "FeatureExtractor", "FeatureMatrix", "feature_names"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_FLOW_FEATURES = (
    "log_duration", "log_orig_bytes", "log_resp_bytes", "log_orig_pkts", "log_resp_pkts", "byte_ratio",
    "no_reply", "rejected", "established", "tcp", "udp", "icmp", "service_known", "low_port",
)
_HOST_FEATURES = (
    "rate", "bytes_mean", "bytes_std", "bytes_sum", "new_dst_share", "new_dst", "new_port", "no_reply_share",
)
_CHANNEL_FEATURES = ("channel_rate", "channel_iat_mean", "channel_iat_cv")
_INBOUND_FEATURES = ("in_rate", "in_new_src_share", "in_no_reply_share")
# Damped sums kept per host and half-life: count, log-bytes, log-bytes squared,
# bytes, new destinations, new ports, unanswered flows.
_HOST_SUMS = 7
# Per channel: last time, count, inter-arrival count, sum and sum of squares, time of the sums.
_CHANNEL_WIDTH = 6
_NO_REPLY_STATES = np.array([s in ("S0", "SH", "OTH", "RSTOS0") for s in CONN_STATES])
_REJECTED = np.array([s in REJECTED_STATES for s in CONN_STATES])
_ESTABLISHED = np.array([s in ESTABLISHED_STATES for s in CONN_STATES])
_LN2 = float(np.log(2.0))
# Per connection state: no-reply, rejected, established (the compiled kernel's lookup table).
_STATE_FLAGS = np.ascontiguousarray(np.stack([_NO_REPLY_STATES, _REJECTED, _ESTABLISHED], axis=1))
_PROTO_CODES = np.array([PROTOCOLS.index("tcp"), PROTOCOLS.index("udp"), PROTOCOLS.index("icmp")], dtype=np.int64)


@dataclass(frozen=True)
class FeatureConfig:
    """Feature extraction settings.

    Attributes:
        half_lives_s: Damping half-lives of the per-host statistics.
        channel_half_life_s: Damping half-life of the per-channel statistics.
        max_hosts: Hosts with state; the least recently seen are evicted beyond it.
        max_pairs_per_host: Channels and ports remembered per host.
        max_age_s: Host age saturates here (older hosts all look established).
        compiled: Compute with the Numba-compiled kernel (ADR 0705): ``None``
            when Numba imports, ``True`` always (an error without Numba),
            ``False`` never (the NumPy reference path). The kernel compiles on
            the first extractor of a process (a few CPU seconds).
    """

    half_lives_s: tuple[float, ...] = (10.0, 60.0, 600.0)
    channel_half_life_s: float = 600.0
    max_age_s: float = 3600.0
    max_hosts: int = 100_000
    max_pairs_per_host: int = 512
    compiled: bool | None = None

    def __post_init__(self) -> None:
        if not self.half_lives_s or min(self.half_lives_s) <= 0 or self.channel_half_life_s <= 0:
            raise ConfigError("half-lives must be positive", code="detection_config_invalid")
        if not 16 <= self.max_hosts <= 10_000_000 or not 8 <= self.max_pairs_per_host <= 1_000_000:
            raise ConfigError("max_hosts or max_pairs_per_host out of range", code="detection_config_invalid")


def feature_names(config: FeatureConfig | None = None) -> tuple[str, ...]:
    """Names of the feature columns, in order."""
    config = config or FeatureConfig()
    host = tuple(f"{name}@{h:g}s" for h in config.half_lives_s for name in _HOST_FEATURES)
    inbound = tuple(f"{name}@{h:g}s" for h in config.half_lives_s for name in _INBOUND_FEATURES)
    return (*_FLOW_FEATURES, *host, "host_age", *_CHANNEL_FEATURES, *inbound)


@dataclass(frozen=True)
class FeatureMatrix:
    """Features of a batch of flows.

    Attributes:
        values: ``(flows, features)`` matrix, columns named by :func:`feature_names`.
        host: Originating host of each row (the entity the row describes).
        new_dst: 1 where the flow went to a destination its host had not used before.
        new_port: 1 where the flow used a (protocol, port) its host had not used before.
    """

    values: FloatArray
    host: npt.NDArray[np.str_]
    new_dst: IntArray
    new_port: IntArray

    def take(self, rows: slice | npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> FeatureMatrix:
        """The rows selected by ``rows`` (a slice, indices or a mask), as one matrix."""
        return FeatureMatrix(self.values[rows], self.host[rows], self.new_dst[rows], self.new_port[rows])

    @staticmethod
    def concatenate(parts: list[FeatureMatrix]) -> FeatureMatrix:
        """The rows of ``parts``, in order (at least one part)."""
        return FeatureMatrix(*(np.concatenate([getattr(p, a) for p in parts])
                               for a in ("values", "host", "new_dst", "new_port")))


def _groups(keys: IntArray, t: FloatArray) -> tuple[npt.NDArray[np.intp], IntArray, npt.NDArray[np.intp]]:
    """Order by (key, time), group number of each sorted row, first row of each group.

    Batches come in time order, so a stable sort by key alone (a radix sort
    for integers) is the (key, time) order; an unordered batch is sorted by both.
    """
    in_order = t.shape[0] < 2 or bool((t[1:] >= t[:-1]).all())
    if in_order and keys.shape[0] and keys.min() >= 0 and keys.max() < 1 << 16:
        order = np.argsort(keys.astype(np.uint16), kind="stable")  # a radix sort
    elif in_order:
        order = np.argsort(keys, kind="stable")
    else:
        order = np.lexsort((t, keys))
    ks = keys[order]
    start = np.ones(ks.shape[0], dtype=bool)
    start[1:] = ks[1:] != ks[:-1]
    g = np.cumsum(start) - 1
    return order, g.astype(np.int64), np.flatnonzero(start)


def _block(n: int) -> int:
    """Rows per block of the blocked scan: about a quarter of the square root of the rows, 4 to 32."""
    return int(min(32, max(4, 1 << max(0, n.bit_length() // 2 - 2))))


def _damped(g: IntArray, t: FloatArray, x: FloatArray, rates: FloatArray, s0: FloatArray,
            t0: FloatArray) -> FloatArray:
    """Damped running sums per group, rows sorted by (group, time).

    ``x`` is ``(n, C)``, ``rates`` ``(R,)``, ``s0`` ``(groups, R, C)``; the
    result ``(n, R, C)`` has, for row ``k`` of group ``j``, rate ``r`` and
    column ``c``, ``s0[j, r, c] * exp(-rates[r] (t_k - t0[j])) + sum over rows
    i <= k of group j of x[i, c] * exp(-rates[r] (t_k - t_i))`` (``x``
    non-negative).

    This is the linear recurrence ``S_k = a_k S_(k-1) + x_k`` with
    ``a_k = exp(-rate (t_k - t_(k-1)))``, ``a = 0`` at the first row of a
    group and the group's saved state, decayed to its first row, added to
    that row's ``x``. It is solved as a blocked scan: the rows are cut into
    blocks of ``b`` (about the square root of ``n``); one pass of ``b``
    steps runs the recurrence inside every block at once, a parallel prefix
    scan (Hillis-Steele) over the block ends carries each block's final
    value into the next, and one product adds the carried value to every
    row. That is ``O(n)`` arithmetic in ``O(sqrt n)`` array operations, the
    same products and sums as the recurrence in another order. Every factor
    is at most 1, so nothing can overflow and groups cannot leak into each other.
    """
    n = x.shape[0]
    r = rates.shape[0]
    if n == 0:
        return np.zeros((0, r, x.shape[1]))
    first = np.ones(n, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    starts = np.flatnonzero(first)
    b = _block(n)
    nb = -(-n // b)
    a = np.zeros((nb * b, r))
    gap = np.maximum(t[1:] - t[:-1], 0.0)
    np.exp(np.multiply.outer(-gap, rates), out=a[1:n])
    a[starts] = 0.0
    rows = np.zeros((nb * b, r, x.shape[1]))
    rows[:n] = x[:, None, :]
    gs = g[starts]
    rows[starts] += s0[gs] * np.exp(np.multiply.outer(-np.maximum(t[starts] - t0[gs], 0.0), rates))[:, :, None]
    # Position in the block first, so every step below works on contiguous (blocks, R, C) slices;
    # the factors are spread over the columns once, so the steps need no broadcasting.
    xs = np.ascontiguousarray(rows.reshape(nb, b, r, -1).transpose(1, 0, 2, 3))
    ab = np.ascontiguousarray(np.broadcast_to(a.reshape(nb, b, r, 1).transpose(1, 0, 2, 3), xs.shape))
    tmp = np.empty_like(xs[0])
    for j in range(1, b):
        np.multiply(ab[j], xs[j - 1], out=tmp)
        xs[j] += tmp
        ab[j] *= ab[j - 1]
    if nb > 1:
        ends = xs[b - 1].copy()
        decay = ab[b - 1].copy()
        step = 1
        while step < nb:
            ends[step:] += decay[step:] * ends[:-step]
            decay[step:] *= decay[:-step]
            step *= 2
        ab[:, 1:] *= ends[None, :-1]
        xs[:, 1:] += ab[:, 1:]
    result: FloatArray = xs.transpose(1, 0, 2, 3).reshape(nb * b, r, -1)[:n]
    return result


@functools.cache
def _kernel() -> ModuleType | None:
    """The compiled kernel module, compiled once per process; ``None`` without Numba."""
    try:
        module = importlib.import_module("iotguard.detection._compiled")
    except ImportError:
        return None
    # Compile now (a few seconds, once), not inside the first batch: two flows through the kernel.
    flows = [Flow(float(i), "192.0.2.1", 40000, "192.0.2.2", 443, "tcp", 0.1, 10, 10, "SF", 1, 1, "")
             for i in range(2)]
    FeatureExtractor(compiled=False)._transform(FlowBatch.from_flows(flows), module)
    table = module.HashedKeyTable(1)
    table.put(np.zeros(1, dtype=np.int64), np.zeros((1, 1)))
    table.drop(np.zeros(1, dtype=np.int64))
    table.get(np.zeros(1, dtype=np.int64))
    hosts = module.HashedHostTable()
    hosts.add(np.zeros(1, dtype=np.int64), np.array(["192.0.2.1"]), np.zeros(1, dtype=np.int64))
    hosts.remove(np.zeros(1, dtype=np.int64))  # rehashes
    return module


class FeatureExtractor:
    """Streaming feature extractor; call :meth:`transform` on consecutive batches.

    Args:
        config: Half-lives and state bounds.
        compiled: Overrides ``config.compiled``: use the Numba-compiled kernel
            (``None``: when Numba imports; ``False``: the NumPy reference path).

    Raises:
        ConfigError: ``compiled`` is true and Numba is not installed.
    """

    def __init__(self, config: FeatureConfig | None = None, *, compiled: bool | None = None) -> None:
        self.config = config or FeatureConfig()
        wanted = self.config.compiled if compiled is None else compiled
        # A flag, not the module, so an extractor can be copied and pickled.
        self._compiled = wanted is not False and _kernel() is not None
        if wanted and not self._compiled:
            raise ConfigError("the compiled feature kernel needs numba (pip install iotguard[accel])",
                              code="detection_config_invalid")
        self.names = feature_names(self.config)
        self._rates = np.array([_LN2 / h for h in self.config.half_lives_s])
        self._channel_rate = _LN2 / self.config.channel_half_life_s
        # Address <-> id (a keyed hash table on the compiled path, ADR 0711); ids below _top are or were used.
        kernel = _kernel() if self._compiled else None
        self._hosts: HostTable = DictHostTable() if kernel is None else kernel.HashedHostTable()
        self._top = 0
        self._free: list[int] = []
        cap = 1024
        self._sums = np.zeros((cap, len(self._rates), _HOST_SUMS))
        self._t_sums = np.zeros(cap)
        self._in_sums = np.zeros((cap, len(self._rates), len(_INBOUND_FEATURES)))
        self._t_in = np.zeros(cap)
        self._first = np.zeros(cap)
        self._last = np.full(cap, -np.inf)
        # The compiled kernel works on hashed tables in place; the NumPy path reads and writes either kind.
        self._channels: StateTable = KeyTable(_CHANNEL_WIDTH) if kernel is None else kernel.HashedKeyTable(
            _CHANNEL_WIDTH)
        self._ports: StateTable = KeyTable(1) if kernel is None else kernel.HashedKeyTable(1)
        self._inserted_since_trim = 0

    @property
    def compiled(self) -> bool:
        """Whether batches go through the compiled kernel."""
        return self._compiled

    @property
    def hosts(self) -> int:
        """Hosts with state."""
        return len(self._hosts)

    @property
    def channel_entries(self) -> int:
        """Channel and port entries held."""
        return len(self._channels) + len(self._ports)

    # -------------------------------------------------------------- host ids

    def _host_ids(self, hosts: npt.NDArray[np.str_], times: FloatArray) -> IntArray:
        """Ids of ``hosts`` (a row each), numbering new hosts (evicting the least recently seen if full)."""
        check_width(hosts)
        if hosts.shape[0] > len(self._free) + self.config.max_hosts - self._top:  # count the new hosts first
            found, first, _, _ = self._hosts.find(hosts, times)
            if first.shape[0] > self.config.max_hosts:
                raise MalformedError("batch names more hosts than max_hosts", code="flow_batch_too_many_hosts")
            if first.shape[0] > len(self._free) + self.config.max_hosts - self._top:
                self._evict(first.shape[0], keep=found[found >= 0])
        found, ids, earliest = self._number(hosts, times)
        self._first[ids] = earliest  # a new host was first seen at the earliest of its rows
        return found

    def _allocate(self, hosts: list[str], now: float) -> IntArray:
        """Ids for ``hosts`` (distinct, not yet known) with fresh state (first seen: not yet)."""
        return self._number(np.array(hosts, dtype=np.str_), np.full(len(hosts), now))[1]

    def _number(self, hosts: npt.NDArray[np.str_], times: FloatArray) -> tuple[IntArray, IntArray, FloatArray]:
        """Each row's id; new hosts take the last freed ids first, then unused ones, with fresh state."""
        free = np.array(self._free[max(0, len(self._free) - hosts.shape[0]):], dtype=np.int64)
        # Room for every row to be new, up to max_hosts (the ids never reach it: there is room, or was evicted).
        needed = min(self._top + max(0, hosts.shape[0] - free.shape[0]), self.config.max_hosts)
        if needed > self._first.shape[0]:
            self._grow(min(max(2 * self._first.shape[0], needed), self.config.max_hosts))
        found, ids, earliest, popped = self._hosts.number(hosts, times, free, self._top)
        if ids.shape[0]:
            del self._free[len(self._free) - popped:]
            self._top += ids.shape[0] - popped
            rows: IntArray | slice = ids
            if (np.diff(ids) == 1).all():  # most often all unused ids: one slice of each array
                rows = slice(int(ids[0]), int(ids[-1]) + 1)
            self._sums[rows] = 0.0
            self._t_sums[rows] = float(times.min())
            self._in_sums[rows] = 0.0
            self._t_in[rows] = float(times.min())
            self._first[rows] = np.inf
            self._last[rows] = float(times.min())
        return found, ids, earliest

    def _held_ids(self, hosts: list[str]) -> IntArray:
        """The ids of ``hosts``, -1 for those without state (nothing is added)."""
        if not hosts:
            return np.zeros(0, dtype=np.int64)
        return self._hosts.find(np.array(hosts, dtype=np.str_), np.zeros(len(hosts))).found

    def _host_names(self, ids: IntArray) -> list[str]:
        """The addresses of ``ids`` (hosts with state)."""
        return self._hosts.names_of(ids)

    def _grow(self, cap: int) -> None:
        n = self._first.shape[0]
        self._sums = np.concatenate([self._sums, np.zeros((cap - n, *self._sums.shape[1:]))])
        self._t_sums = np.concatenate([self._t_sums, np.zeros(cap - n)])
        self._in_sums = np.concatenate([self._in_sums, np.zeros((cap - n, *self._in_sums.shape[1:]))])
        self._t_in = np.concatenate([self._t_in, np.zeros(cap - n)])
        self._first = np.concatenate([self._first, np.zeros(cap - n)])
        self._last = np.concatenate([self._last, np.full(cap - n, -np.inf)])

    def _evict(self, wanted: int, keep: IntArray) -> None:
        """Free the least recently seen hosts (never those in ``keep``)."""
        used = self._hosts.ids()
        candidates = used[~np.isin(used, keep)]
        count = min(candidates.shape[0], wanted + self.config.max_hosts // 10)
        victims = candidates[np.argsort(self._last[candidates], kind="stable")[:count]]
        self._hosts.remove(victims)
        self._free.extend(victims.tolist())
        self._last[victims] = -np.inf
        self._drop_hosts(victims)

    def _drop_hosts(self, victims: IntArray) -> None:
        keys, _ = self._channels.items()
        self._channels.keep(~(np.isin(keys >> 32, victims) | np.isin(keys & 0xFFFFFFFF, victims)))
        keys, _ = self._ports.items()
        self._ports.keep(~np.isin(keys >> 18, victims))

    def _trim(self) -> None:
        """Keep the ``max_pairs_per_host`` most recent channel and port entries of each host."""
        cap = self.config.max_pairs_per_host
        for table, shift, col in ((self._channels, 32, 0), (self._ports, 18, 0)):
            # Most checks find no host over the cap: count on the keys in table order before sorting anything.
            unsorted = table.keys_any_order()
            if unsorted.shape[0] == 0:
                continue
            counts = np.bincount(unsorted >> shift)
            if counts.max() <= cap:
                continue
            # Only the entries of hosts over the cap are ranked: by host, most recent first, ties in key order.
            keys = np.sort(unsorted[counts[unsorted >> shift] > cap])
            host = keys >> shift
            order = np.lexsort((-table.get(keys)[1][:, col], host))
            hs = host[order]
            start = np.ones(hs.shape[0], dtype=bool)
            start[1:] = hs[1:] != hs[:-1]
            first = np.maximum.accumulate(np.where(start, np.arange(hs.shape[0]), 0))
            rank = np.arange(hs.shape[0]) - first
            table.drop(keys[order[rank >= cap]])

    # -------------------------------------------------------------- features

    def transform(self, batch: FlowBatch) -> FeatureMatrix:
        """Update the state with ``batch`` (in time order) and return its features.

        Raises:
            MalformedError: ``flow_batch_too_many_hosts`` if one batch names more
                hosts than ``max_hosts``.
        """
        return self._transform(batch, _kernel() if self._compiled else None)

    def _transform(self, batch: FlowBatch, kernel: ModuleType | None) -> FeatureMatrix:
        n = len(batch)
        if n == 0:
            return FeatureMatrix(np.zeros((0, len(self.names))), batch.orig_h, np.zeros(0, np.int64),
                                 np.zeros(0, np.int64))
        t = batch.ts
        if kernel is not None:
            self._hashed_tables(kernel)
        ids = self._host_ids(np.concatenate([batch.orig_h, batch.resp_h]), np.concatenate([t, t]))
        src, dst = ids[:n], ids[n:]
        if kernel is not None and (n < 2 or bool((t[1:] >= t[:-1]).all())):
            return self._transform_compiled(kernel, batch, src, dst)
        flow = self._flow_features(batch)

        # Novelty: a destination (port) is new for a host if it is not in the
        # host's table and this is its first use in the batch (the first row of
        # its group: groups are in time order).
        pair = (src << 32) | dst
        channels = _groups(pair, t)
        keys = pair[channels[0]][channels[2]]
        known, state = self._channels.get(keys, default=0.0)
        new_dst = np.zeros(n, dtype=bool)
        new_dst[channels[0][channels[2][~known]]] = True
        port = (src << 18) | (batch.proto << 16) | batch.resp_p
        p_order, _, p_starts = _groups(port, t)
        p_keys = port[p_order][p_starts]
        new_port = np.zeros(n, dtype=bool)
        new_port[p_order[p_starts[~self._ports.get(p_keys)[0]]]] = True

        host_values = self._host_features(src, t, batch.orig_bytes, flow, new_dst, new_port)
        channel_values = self._channel_features(channels, keys, known, state, t)
        # The last row of a port's group is its latest use.
        p_ends = np.append(p_starts[1:], n) - 1
        self._ports.put(p_keys, t[p_order][p_ends][:, None])
        self._inserted_since_trim += int(new_dst.sum() + new_port.sum())
        if self._inserted_since_trim > max(4096, len(self._channels) // 4):
            self._trim()
            self._inserted_since_trim = 0
        # Rows are in time order, so the last write per host is its latest time.
        self._last[src] = t
        self._last[dst] = t
        age = np.log1p(np.clip(t - self._first[src], 0.0, self.config.max_age_s))
        inbound = self._inbound_features(dst, t, new_dst, flow[:, 6])
        values = np.concatenate([flow, host_values, age[:, None], channel_values, inbound], axis=1)
        return FeatureMatrix(values, batch.orig_h, new_dst.astype(np.int64), new_port.astype(np.int64))

    def _hashed_tables(self, kernel: ModuleType) -> tuple[Any, Any]:
        """The channel and port tables in the kernel's hashed form (converted once if the NumPy path built them;
        the host table likewise)."""
        if not isinstance(self._hosts, kernel.HashedHostTable):
            self._hosts = kernel.HashedHostTable.from_table(self._hosts)
        if not isinstance(self._channels, kernel.HashedKeyTable):
            self._channels = kernel.HashedKeyTable.from_items(_CHANNEL_WIDTH, *self._channels.items())
            self._ports = kernel.HashedKeyTable.from_items(1, *self._ports.items())
        return self._channels, self._ports

    def _transform_compiled(self, kernel: ModuleType, batch: FlowBatch, src: IntArray,
                            dst: IntArray) -> FeatureMatrix:
        """:meth:`transform` of a batch in time order by the compiled kernel (same state, same columns)."""
        n = len(batch)
        channels, ports = self._hashed_tables(kernel)
        # Each row adds at most one channel and one port.
        channels.reserve(n)
        ports.reserve(n)
        values = np.empty((n, len(self.names)))
        new_dst = np.zeros(n, dtype=np.int64)
        new_port = np.zeros(n, dtype=np.int64)
        c = np.ascontiguousarray
        # The logarithms run vectorised in NumPy, outside the per-flow pass: the flow's own before it, those
        # of the state's sums (which the pass writes to ``deferred``) after it, placed by a compiled pass.
        logs = np.log1p(np.stack([batch.duration, batch.orig_bytes, batch.resp_bytes, batch.orig_pkts,
                                  batch.resp_pkts]).astype(np.float64, copy=False))
        deferred = np.empty((n, 5 * len(self._rates) + 3))
        deferred_cols = np.zeros(deferred.shape[1], dtype=np.int64)
        added_c, added_p = kernel.extract_batch(
            c(batch.ts, dtype=np.float64), src, dst, c(batch.orig_bytes, dtype=np.float64),
            c(batch.resp_pkts, dtype=np.float64),
            c(batch.state, dtype=np.int64), c(batch.proto, dtype=np.int64), c(batch.resp_p, dtype=np.int64),
            c(batch.service_known, dtype=np.int64), _STATE_FLAGS, _PROTO_CODES,
            channels.keys, channels.values, channels.shift, ports.keys, ports.values, ports.shift,
            self._rates, self._channel_rate, self._sums, self._t_sums, self._in_sums, self._t_in, self._first,
            self.config.max_age_s, values, new_dst, new_port, self._last, logs, deferred, deferred_cols)
        kernel.place_deferred(np.log1p(deferred, out=deferred), deferred_cols, values)
        channels.count += added_c
        ports.count += added_p
        self._inserted_since_trim += added_c + added_p
        if self._inserted_since_trim > max(4096, len(self._channels) // 4):
            self._trim()
            self._inserted_since_trim = 0
        # The kernel set each host's last time as the NumPy path does (a responder's write wins).
        return FeatureMatrix(values, batch.orig_h, new_dst, new_port)

    @staticmethod
    def _flow_features(b: FlowBatch) -> FloatArray:
        lob, lrb = np.log1p(b.orig_bytes), np.log1p(b.resp_bytes)
        cols = [
            np.log1p(b.duration), lob, lrb, np.log1p(b.orig_pkts), np.log1p(b.resp_pkts), lob - lrb,
            (_NO_REPLY_STATES[b.state] & (b.resp_pkts == 0)).astype(np.float64),
            _REJECTED[b.state].astype(np.float64), _ESTABLISHED[b.state].astype(np.float64),
            (b.proto == PROTOCOLS.index("tcp")).astype(np.float64),
            (b.proto == PROTOCOLS.index("udp")).astype(np.float64),
            (b.proto == PROTOCOLS.index("icmp")).astype(np.float64),
            b.service_known.astype(np.float64), (b.resp_p < 1024).astype(np.float64),
        ]
        return np.stack(cols, axis=1)

    def _host_features(self, src: IntArray, t: FloatArray, orig_bytes: FloatArray, flow: FloatArray,
                       new_dst: npt.NDArray[np.bool_], new_port: npt.NDArray[np.bool_]) -> FloatArray:
        order, g, starts = _groups(src, t)
        ts = t[order]
        lob = flow[order, 1]
        x = np.stack([np.ones_like(lob), lob, lob * lob, orig_bytes[order], new_dst[order].astype(np.float64),
                      new_port[order].astype(np.float64), flow[order, 6]], axis=1)
        host = src[order][starts]
        ends = np.append(starts[1:], ts.shape[0]) - 1
        n_rates = len(self._rates)
        # One pass for every half-life: sums are (row, half-life, sum).
        s = _damped(g, ts, x, self._rates, self._sums[host], self._t_sums[host])
        w = s[:, :, 0]
        mean = s[:, :, 1] / w
        second = s[:, :, 2] / w
        var = second - mean * mean
        # Below this the variance is rounding noise of the difference of two sums.
        std = np.sqrt(np.where(var > 1e-9 * second, var, 0.0))
        block = np.stack([np.log1p(w), mean, std, np.log1p(s[:, :, 3]), s[:, :, 4] / w, np.log1p(s[:, :, 4]),
                          np.log1p(s[:, :, 5]), s[:, :, 6] / w], axis=2)
        out = np.empty((t.shape[0], n_rates * len(_HOST_FEATURES)))
        out[order] = block.reshape(t.shape[0], -1)
        self._sums[host] = s[ends]
        self._t_sums[host] = ts[ends]
        return out

    def _inbound_features(self, dst: IntArray, t: FloatArray, new_pair: npt.NDArray[np.bool_],
                          no_reply: FloatArray) -> FloatArray:
        """Per responding host: damped inbound flow rate, share from new sources, share unanswered."""
        order, g, starts = _groups(dst, t)
        ts = t[order]
        x = np.stack([np.ones_like(ts), new_pair[order].astype(np.float64), no_reply[order]], axis=1)
        host = dst[order][starts]
        s = _damped(g, ts, x, self._rates, self._in_sums[host], self._t_in[host])
        w = s[:, :, 0]
        block = np.stack([np.log1p(w), s[:, :, 1] / w, s[:, :, 2] / w], axis=2)
        out = np.empty((t.shape[0], len(self._rates) * len(_INBOUND_FEATURES)))
        out[order] = block.reshape(t.shape[0], -1)
        ends = np.append(starts[1:], ts.shape[0]) - 1
        self._in_sums[host] = s[ends]
        self._t_in[host] = ts[ends]
        return out

    def _channel_features(self, groups: tuple[npt.NDArray[np.intp], IntArray, npt.NDArray[np.intp]],
                          keys: IntArray, known: npt.NDArray[np.bool_], state: FloatArray,
                          t: FloatArray) -> FloatArray:
        order, g, starts = groups
        ts = t[order]
        # state columns: last time, count, iat count, iat sum, iat sum of squares, time of the sums
        prev = np.empty_like(ts)
        prev[1:] = ts[:-1]
        prev[starts] = np.where(known, state[:, 0], np.nan)
        iat = ts - prev
        has = np.isfinite(iat)
        iat = np.where(has, np.maximum(iat, 0.0), 0.0)
        x = np.stack([np.ones_like(ts), has.astype(np.float64), iat, iat * iat], axis=1)
        t0 = np.where(known, state[:, 5], ts[starts])
        s = _damped(g, ts, x, np.array([self._channel_rate]), state[:, None, 1:5], t0)[:, 0, :]
        n_iat = s[:, 1]
        mean = np.where(n_iat > 0, s[:, 2] / np.maximum(n_iat, 1e-12), 0.0)
        var = np.where(n_iat > 0, s[:, 3] / np.maximum(n_iat, 1e-12) - mean * mean, 0.0)
        cv = np.where((n_iat >= 1.5) & (mean > 0), np.sqrt(np.maximum(var, 0.0)) / np.maximum(mean, 1e-12), 1.0)
        out = np.empty((t.shape[0], len(_CHANNEL_FEATURES)))
        out[order] = np.stack([np.log1p(s[:, 0]), np.log1p(mean), np.minimum(cv, 5.0)], axis=1)
        ends = np.append(starts[1:], ts.shape[0]) - 1
        self._channels.put(keys, np.concatenate([ts[ends][:, None], s[ends], ts[ends][:, None]], axis=1))
        return out
