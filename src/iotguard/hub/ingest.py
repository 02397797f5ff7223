"""Batch ingest: parse strictly, look up device and epoch, open (batched),
replay window, authorize, store durably, then acknowledge.

:class:`IngestProcessor` takes a batch of raw MQTT messages and returns what
to acknowledge; it never raises for bad input (each bad message gets a
reason code). Only a storage failure raises, and then nothing of the batch
is acknowledged, so the broker or the devices send it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from iotguard.audit import AuditSink, rejected_envelopes
from iotguard.channel import ReplayWindow, SessionKeys, ack_topic, encode_ack, make_nonce, telemetry_topic
from iotguard.clock import Clock, SystemClock
from iotguard.config import HubConfig
from iotguard.crypto import AeadSuite, OpenRequest, get_suite
from iotguard.errors import (
    IotGuardError,
    MalformedError,
    ReplayError,
    StorageError,
)
from iotguard.hub.registry import FleetRegistry
from iotguard.hub.store import DeviceRecord, HubStore
from iotguard.wire import Envelope, Reading, associated_data, decode_envelope, decode_reading

__all__ = ["REASON_CODES", "BatchOutcome", "Incoming", "IngestProcessor", "IngestStats"]

log = logging.getLogger(__name__)

#: Every reason code ingest can reject a message with.
REASON_CODES = (
    "malformed", "topic_mismatch", "unknown_device", "revoked", "forged", "replay", "policy_denied",
)

#: Called for each authentic reading before it is stored; raises PolicyDenied to refuse it.
Authorizer = Callable[[DeviceRecord, str, Reading], None]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    ack_token: Any = None
    #: ``time.monotonic()`` when the message arrived (for the ingest latency metric).
    arrived: float = 0.0


@dataclass
class BatchOutcome:
    """What a processed batch did."""

    stored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: (ack topic, epoch) -> encoded, authenticated end-to-end acknowledgement.
    acks: dict[tuple[str, int], bytes] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)


class IngestStats:
    """Counters since start, read by metrics, the API and the demo."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stored = 0
        self.batches = 0
        self.rejected: Counter[str] = Counter()
        self._latencies: list[float] = []

    def add(self, outcome: BatchOutcome) -> None:
        with self._lock:
            self.stored += outcome.stored
            self.batches += 1
            self.rejected.update(outcome.rejected)
            self._latencies.extend(outcome.latencies_ms)
            if len(self._latencies) > 200_000:
                del self._latencies[: len(self._latencies) - 100_000]

    def latency_percentiles(self) -> dict[str, float]:
        with self._lock:
            xs = sorted(self._latencies)
        if not xs:
            return {"p50": 0.0, "p99": 0.0}

        def pct(p: float) -> float:
            return round(xs[min(len(xs) - 1, int(p * len(xs)))], 2)

        return {"p50": pct(0.50), "p99": pct(0.99)}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"stored": self.stored, "batches": self.batches, "rejected": dict(self.rejected)}


@dataclass
class _Candidate:
    msg: Incoming
    env: Envelope
    record: DeviceRecord
    suite: AeadSuite
    keys: SessionKeys


class IngestProcessor:
    """Turns batches of raw messages into durably stored readings."""

    def __init__(
        self, store: HubStore, registry: FleetRegistry, cfg: HubConfig, *,
        clock: Clock | None = None, authorizer: Authorizer | None = None, audit: AuditSink | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.authorizer = authorizer
        self.audit = audit
        self.stats = IngestStats()
        self._windows: dict[tuple[str, int], ReplayWindow] = {}

    def _window(self, device_id: str, epoch: int) -> ReplayWindow:
        key = (device_id, epoch)
        w = self._windows.get(key)
        if w is None:
            saved = self.store.replay_window(device_id, epoch)
            w = ReplayWindow(self.cfg.replay_window, *saved) if saved else ReplayWindow(self.cfg.replay_window)
            self._windows[key] = w
        return w

    def process(self, batch: Sequence[Incoming]) -> BatchOutcome:
        """Process one batch; see the module docstring.

        Raises:
            StorageError: the batch could not be stored; acknowledge none of it.
        """
        now = self.clock.now()
        out = BatchOutcome()
        rejected: Counter[tuple[str, str]] = Counter()
        reack: dict[tuple[str, int], set[int]] = defaultdict(set)
        candidates: list[_Candidate] = []
        for msg in batch:
            try:
                env = decode_envelope(msg.payload, max_size=self.cfg.max_envelope_bytes)
            except MalformedError:
                rejected[("", "malformed")] += 1
                continue
            try:
                record, suite_name, keys = self.registry.session(env.device_id, env.epoch)
                if msg.topic != telemetry_topic(record.segment, env.device_id):
                    rejected[(env.device_id, "topic_mismatch")] += 1
                    continue
                suite = get_suite(suite_name)
                if env.suite_id != suite.suite_id:
                    rejected[(env.device_id, "forged")] += 1
                    continue
                self._window(env.device_id, env.epoch).check(env.seq)
            except ReplayError as exc:
                rejected[(env.device_id, "replay")] += 1
                if "already" in str(exc):
                    reack[(env.device_id, env.epoch)].add(env.seq)
                continue
            except IotGuardError as exc:
                # unknown_device, revoked: counted under the device id they
                # claim only when it is registered, so junk ids cannot bloat
                # the rejection table.
                rejected[("" if exc.code == "unknown_device" else env.device_id, exc.code)] += 1
                continue
            candidates.append(_Candidate(msg, env, record, suite, keys))

        rows: list[dict[str, Any]] = []
        touched: set[tuple[str, int]] = set()
        acked: dict[tuple[str, int], set[int]] = defaultdict(set)
        arrived: dict[tuple[str, int, int], float] = {}
        by_suite: dict[int, list[_Candidate]] = defaultdict(list)
        for c in candidates:
            by_suite[c.suite.suite_id].append(c)
        for group in by_suite.values():
            suite = group[0].suite
            results = suite.open_batch([
                OpenRequest(c.keys.uplink, make_nonce(c.env.epoch, c.env.seq, suite.nonce_size),
                            associated_data(c.env.header, c.msg.topic), c.env.ciphertext)
                for c in group
            ])
            for c, res in zip(group, results, strict=True):
                d, e, s = c.env.device_id, c.env.epoch, c.env.seq
                if isinstance(res, Exception):
                    rejected[(d, "forged")] += 1
                    continue
                try:
                    self._window(d, e).accept(s)  # also catches duplicates inside one batch
                except ReplayError:
                    rejected[(d, "replay")] += 1
                    reack[(d, e)].add(s)
                    continue
                touched.add((d, e))
                acked[(d, e)].add(s)
                try:
                    reading = decode_reading(res, max_size=self.cfg.max_envelope_bytes,
                                             max_fields=self.cfg.max_reading_fields)
                    if self.authorizer is not None:
                        self.authorizer(c.record, c.msg.topic, reading)
                except IotGuardError as exc:
                    rejected[(d, exc.code)] += 1
                    continue
                arrived[(d, e, s)] = c.msg.arrived
                rows.append({"device_id": d, "epoch": e, "seq": s, "topic": c.msg.topic,
                             "received_at": now, "body": res})

        windows = [(d, e, self._windows[(d, e)].top, self._windows[(d, e)].bitmap()) for d, e in touched]
        try:
            inserted = self.store.store_batch(rows, windows, dict(rejected), now=now)
        except StorageError:
            # The in-memory windows already accepted this batch; forget them
            # so the retried batch is judged against what is really stored.
            for key in touched:
                self._windows.pop(key, None)
            raise
        done = time.monotonic()
        late = [r for r in rows if (r["device_id"], r["epoch"], r["seq"]) not in inserted]
        if late:
            # Stored meanwhile by another hub process: a replay here, still acknowledged.
            extra: Counter[tuple[str, str]] = Counter((r["device_id"], "replay") for r in late)
            self.store.count_rejections(dict(extra), now=now)
            rejected.update(extra)
        out.stored = len(inserted)
        for stored_key in inserted:
            if arrived[stored_key]:
                out.latencies_ms.append((done - arrived[stored_key]) * 1000.0)
        for d, e in set(acked) | set(reack):
            try:
                record, _, keys = self.registry.session(d, e)
            except IotGuardError:
                continue
            seqs = acked.get((d, e), set()) | reack.get((d, e), set())
            out.acks[(ack_topic(record.segment, d), e)] = encode_ack(d, e, seqs, keys.downlink)
        for (_d, reason), n in rejected.items():
            out.rejected[reason] += n
        if rejected and self.audit is not None:
            # One aggregated entry per (device, reason) and batch; the data is
            # already committed, so a failing audit write is logged, not fatal.
            try:
                self.audit.record_many([rejected_envelopes(d or "unattributed", reason, n, now, now)
                                        for (d, reason), n in sorted(rejected.items())])
            except IotGuardError as exc:
                log.error("could not audit %d rejections: %s", sum(rejected.values()), exc.code)
        self.stats.add(out)
        return out
