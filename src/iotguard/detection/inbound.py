"""Probing and password guessing against a device from outside its network (issue 13, ADR 0708).

The other flow rules describe what a host *sends*. This one looks at what
external addresses do *to* a device: unsolicited connection attempts from a
global address to a local one (or to a fleet device), counted the way Zeek's
own detectors count them, from the device's side:

* **swept by many sources**: the device has been contacted by at least
  ``sources`` (25) sources it had never seen within ``scan_window_s`` (5
  minutes) — Zeek's address-scan threshold (``Scan::addr_scan_threshold``
  and ``addr_scan_interval``), turned round to count the sources that probe
  one device instead of the devices one source probes;
* **port-scanned by one source**: the source has tried at least ``ports``
  (15) ports it had never used within 5 minutes (``Scan::port_scan_threshold``);
* **password guessing by one source**: at least ``guesses`` (30) connections
  from the source to the device's remote-login ports (SSH 22, telnet 23,
  Mirai's alternative telnet 2323, Android debug bridge 5555) within
  ``guess_window_s`` (30 minutes) — Zeek's SSH guesser
  (``SSH::password_guesses_limit``, ``guessing_timeout``).

Only attempts count: connections Zeek's scan policy calls failed
(unanswered: ``S0``, ``SH``, ``RSTOS0``; refused: ``REJ``; reset after the
handshake with no payload either way: ``RSTO``, ``RSTR``) and any connection
to a remote-login port. The counts are the feature extractor's damped sums
(the responder's inbound flows from new sources, the source's new ports, the
channel's flows), so the rule keeps no state of its own, the hub's shared
per-host state carries it (ADR 0752). The per-flow test runs as one compiled
pass when Numba is installed (:mod:`._compiled_rules`; the NumPy form is its
reference), and reads the count columns of attempts only. A damped count is
not a sliding window: a threshold is converted to the damped count that its
number of events, spread evenly over its window, leave at the window's end
(:func:`window_equivalent`). One damped count remembers too briefly or too
long for a 5-minute window (at a 600 s half-life a steady 7 sources per 5
minutes would reach the count of 25 within 5 minutes; at 60 s, about 10
sources within a minute), so the sweep and port-scan conditions need the
count at both the short (60 s) and the long (600 s) half-life to reach its
equivalent: then both a steady rate and a burst fire near Zeek's thresholds
(tested). The guessing count exists at one half-life (the channel's, 600 s):
a steady 26 per 30 minutes or a burst of 13 reach it.

An attacked device is not a compromised one, and whoever probes it chooses to.
The alert is about the device (its address is the responder's) and is
**low** severity: repeated every ``realert_s`` it keeps the device's risk
high enough for step-up attestation but, alone, below the containment line,
so an outsider cannot quarantine a device by probing it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping
from types import ModuleType

import numpy as np
import numpy.typing as npt

from iotguard.detection.alert import Alert, Scalar, Severity
from iotguard.detection.features import FeatureMatrix
from iotguard.detection.flows import FAILED_STATE, PROTOCOLS, RESET_STATE, FlowBatch, failed_attempts
from iotguard.detection.rules import BoolArray, FlowRule, _ip
from iotguard.detection.rules import _kernel as _rules_kernel
from iotguard.errors import ConfigError

__all__ = ["LOGIN_PORTS", "InboundProbeRule", "window_equivalent"]

#: Remote-login services that password guessers and IoT worms try: SSH, telnet, telnet on Mirai's
#: alternative port, the Android debug bridge.
LOGIN_PORTS: tuple[int, ...] = (22, 23, 2323, 5555)

_TCP = PROTOCOLS.index("tcp")
_LOGIN = np.zeros(1 << 16, dtype=bool)
_LOGIN[list(LOGIN_PORTS)] = True


def window_equivalent(count: float, window_s: float, half_life_s: float) -> float:
    """The damped count (half-life ``half_life_s``) that ``count`` events spread evenly over ``window_s`` leave.

    Events at a steady rate ``count / window_s`` for ``window_s`` seconds sum,
    each weighed ``2^(-age / half_life_s)``, to this value at the window's end.
    """
    tau = half_life_s / math.log(2.0)
    return count * tau / window_s * -math.expm1(-window_s / tau)


@functools.cache
def _kernel() -> ModuleType | None:
    """The compiled per-flow test, compiled once per process; ``None`` without Numba."""
    module = _rules_kernel()
    if module is None:
        return None
    # Compile now (about a second, once), not inside the first batch the hub judges.
    i, f = np.zeros(1, dtype=np.int64), np.zeros(1)
    module.inbound_candidates(i, f, f, i, i, np.zeros((1, 7)), np.arange(7, dtype=np.intp), np.zeros(7),
                              FAILED_STATE, RESET_STATE, _LOGIN, _TCP, np.ones(2))
    return module


@functools.lru_cache(maxsize=65536)
def _external(address: str) -> bool:
    """Whether ``address`` is a global unicast address (on the Internet, outside any site)."""
    ip = _ip(address)
    return ip is not None and ip.is_global and not ip.is_multicast


@functools.lru_cache(maxsize=65536)
def _local(address: str) -> bool:
    """Whether ``address`` is one host of a site's own address space (private, link-local, shared)."""
    ip = _ip(address)
    return ip is not None and not (ip.is_global or ip.is_multicast or ip.is_unspecified
                                   or address == "255.255.255.255")


class InboundProbeRule(FlowRule):
    """Connection attempts from outside against a device: sweeps, port scans, password guessing.

    Args:
        names: Feature column names (the rule reads the damped counts at both ``half_lives_s``).
        half_lives_s: The short and the long half-life of the host and inbound counts read.
        channel_half_life_s: Half-life of the channel counts (the extractor's ``channel_half_life_s``).
        sources: New sources probing one device within ``scan_window_s``.
        ports: New ports one source tries within ``scan_window_s``.
        scan_window_s: Window of ``sources`` and ``ports``.
        guesses: Connections of one source to the device's login ports within ``guess_window_s``.
        guess_window_s: Window of ``guesses``.
        devices: Address -> device id of fleet devices (a fleet device is never the outsider, and is
            an inbound target whatever its address).
        local_hosts: Further addresses inside the site whatever their address (e.g. the hosts Zeek
            marked ``local_orig`` / ``local_resp`` from its ``Site::local_nets``): never the outsider,
            and inbound targets.
        realert_s: Quiet time per device after an alert.

    Raises:
        ConfigError: ``detection_config_invalid`` if the features lack a column the rule reads.
    """

    name = "inbound_probing"
    severity = Severity.LOW

    def __init__(self, names: tuple[str, ...], *, half_lives_s: tuple[float, float] = (60.0, 600.0),
                 channel_half_life_s: float = 600.0,
                 sources: float = 25.0, ports: float = 15.0, scan_window_s: float = 300.0, guesses: float = 30.0,
                 guess_window_s: float = 1800.0, devices: Mapping[str, str] | None = None,
                 local_hosts: Collection[str] = (), realert_s: float = 300.0, compiled: bool = True) -> None:
        super().__init__(devices, realert_s)
        self.compiled = compiled
        self.inside = frozenset(self.devices) | frozenset(local_hosts)
        self.names = names
        self.columns = tuple(f"{c}@{h:g}s" for h in half_lives_s for c in ("in_rate", "in_new_src_share", "new_port"))
        for column in (*self.columns, "channel_rate"):
            if column not in names:
                raise ConfigError(f"inbound_probing reads the feature {column}, which the extractor lacks",
                                  code="detection_config_invalid")
        self._index = np.array([names.index(c) for c in (*self.columns, "channel_rate")], dtype=np.intp)
        # Per half-life: the new-source and new-port counts the two 5-minute thresholds leave.
        self.min_sources = np.array([window_equivalent(sources, scan_window_s, h) for h in half_lives_s])
        self.min_ports = np.array([window_equivalent(ports, scan_window_s, h) for h in half_lives_s])
        self.min_guesses = window_equivalent(guesses, guess_window_s, channel_half_life_s)
        # The columns hold log1p of the counts (shares as they are: no bound on them).
        self._log_thresholds = np.array([np.log1p(self.min_sources[0]), -np.inf, np.log1p(self.min_ports[0]),
                                         np.log1p(self.min_sources[1]), -np.inf, np.log1p(self.min_ports[1]),
                                         np.log1p(self.min_guesses)])
        if compiled:
            _kernel()  # compiled here, as the feature extractor's kernel is, not inside the first batch judged

    def _counts(self, features: FeatureMatrix, rows: npt.NDArray[np.intp]) -> tuple[npt.NDArray[np.float64], ...]:
        """For ``rows``, as a fraction of each threshold (1 = at it; for the first two the lower of the two
        half-lives'): new sources of the responder, new ports of the originator, flows of the channel (damped)."""
        c = features.values.take(rows, axis=0).take(self._index, axis=1)
        sources = np.minimum(np.expm1(c[:, 0]) * c[:, 1] / self.min_sources[0],
                             np.expm1(c[:, 3]) * c[:, 4] / self.min_sources[1])
        ports = np.minimum(np.expm1(c[:, 2]) / self.min_ports[0], np.expm1(c[:, 5]) / self.min_ports[1])
        return sources, ports, np.expm1(c[:, 6]) / self.min_guesses

    @staticmethod
    def _attempts(batch: FlowBatch) -> tuple[BoolArray, BoolArray]:
        """Per flow: a failed connection attempt (Zeek's test), and a connection to a login port."""
        login: BoolArray = _LOGIN[batch.resp_p] & (batch.proto == _TCP)
        return failed_attempts(batch), login

    def _candidates(self, batch: FlowBatch, features: FeatureMatrix) -> tuple[npt.NDArray[np.intp], BoolArray]:
        """The rows on which the rule holds, and for each whether it is a connection to a login port."""
        kernel = _kernel() if self.compiled else None
        if kernel is None:
            rows, login = self._candidates_numpy(batch, features)
        else:
            rows, login = kernel.inbound_candidates(
                batch.state, batch.orig_bytes, batch.resp_bytes, batch.resp_p, batch.proto, features.values,
                self._index, self._log_thresholds, FAILED_STATE, RESET_STATE, _LOGIN, _TCP, self.min_sources)
        if rows.shape[0]:
            # Only now the addresses: from outside to a device.
            inside = self.inside
            inbound = np.array([o not in inside and _external(o) and (r in inside or _local(r))
                                for o, r in zip(batch.orig_h[rows].tolist(), batch.resp_h[rows].tolist(),
                                                strict=True)], dtype=bool)
            rows, login = rows[inbound], login[inbound]
        return rows, login

    def _candidates_numpy(self, batch: FlowBatch,
                          features: FeatureMatrix) -> tuple[npt.NDArray[np.intp], BoolArray]:
        """The reference of the compiled test (:mod:`._compiled_rules`): attempts whose counts reach a threshold."""
        failed, login = self._attempts(batch)
        rows = np.flatnonzero(failed | login)  # column reads only for attempts: few rows of a benign batch
        if rows.shape[0] == 0:
            return rows, login[rows]
        # One gather and one comparison with each count's threshold on the columns' log1p scale; the product
        # of the sweep count (rate x share of new sources) only where both rates reach it.
        c = features.values.take(rows, axis=0).take(self._index, axis=1)
        ok = c >= self._log_thresholds
        sweep = ok[:, 0] & ok[:, 3]
        if sweep.any():
            sweep[sweep] = self._counts(features, rows[sweep])[0] >= 1.0
        rows = rows[sweep | (ok[:, 2] & ok[:, 5]) | (ok[:, 6] & login[rows])]
        return rows, login[rows]

    def hits(self, batch: FlowBatch, features: FeatureMatrix) -> BoolArray:
        out = np.zeros(len(batch), dtype=bool)
        out[self._candidates(batch, features)[0]] = True
        return out

    def evaluate(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        rows, login = self._candidates(batch, features)
        if rows.shape[0] == 0:
            return []
        hit = np.zeros(len(batch), dtype=bool)
        hit[rows] = True
        sources, ports, channel = self._counts(features, rows)
        # The score: how far the strongest count is past its threshold (1 = at it).
        score = np.zeros(len(batch))
        score[rows] = np.maximum(np.maximum(sources, ports), np.where(login, channel, 0.0))
        return self._alerts(batch, hit, score, host_column="resp_h")

    def _evidence(self, batch: FlowBatch, rows: BoolArray) -> dict[str, Scalar]:
        failed, login = self._attempts(batch)  # once per alert, not per batch
        origins = np.unique(batch.orig_h[rows])
        return {"sources": int(origins.shape[0]), "source_sample": ",".join(origins[:4].tolist())[:120],
                "login_attempts": int((rows & login).sum()), "failed_attempts": int((rows & failed).sum())}
