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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from iotguard.admission import DEVICE_OVER_QUOTA, SEGMENT_OVER_QUOTA, Admission, QuotaLimits
from iotguard.audit import AuditSink, rejected_envelopes
from iotguard.channel import (
    ReplayWindow,
    SessionKeys,
    ack_topic,
    encode_ack,
    make_nonce,
    media_topic,
    telemetry_topic,
)
from iotguard.clock import Clock, SystemClock
from iotguard.config import HubConfig
from iotguard.crypto import AeadSuite, OpenRequest, get_suite
from iotguard.crypto.ascon import AsconAead128Suite
from iotguard.errors import (
    DuplicateError,
    IotGuardError,
    MalformedError,
    PolicyDenied,
    ReplayError,
    StorageError,
)
from iotguard.hub.store import DeviceRecord, HubStore
from iotguard.hub.stores import WindowWrite
from iotguard.wire import (
    Envelope,
    MediaObject,
    Reading,
    associated_data,
    decode_envelope,
    decode_media_object,
    decode_reading,
)

_MEDIA_SUFFIX = "/media"

__all__ = ["REASON_CODES", "BatchOutcome", "Incoming", "IngestProcessor", "IngestStats", "SessionLookup",
           "admission_from_config"]

log = logging.getLogger(__name__)

#: Every reason code ingest can reject a message with.
REASON_CODES = (
    "malformed", "topic_mismatch", "unknown_device", "revoked", "forged", "replay", "policy_denied",
    DEVICE_OVER_QUOTA, SEGMENT_OVER_QUOTA,
    "data_key_unavailable", "internal_error",  # counted by the MQTT ingest loop (hub/mqtt_ingest.py)
)


#: Quota refusals are audited at most this often (seconds), aggregated per device and reason:
#: a flood refused message by message must not become an audit append per batch.
QUOTA_AUDIT_INTERVAL_S = 5.0
_QUOTA_REASONS = frozenset({DEVICE_OVER_QUOTA, SEGMENT_OVER_QUOTA})


def admission_from_config(cfg: HubConfig) -> Admission:
    """The ingest quotas of ``cfg`` (this process's share of them, ADR 1500)."""
    return Admission(QuotaLimits(cfg.quota_device_rate, cfg.quota_device_burst, cfg.quota_share),
                     QuotaLimits(cfg.quota_segment_rate, cfg.quota_segment_burst, cfg.quota_share))


class SessionLookup(Protocol):
    """Where ingest finds a device's record and session keys (the device lifecycle service)."""

    def session(self, device_id: str, epoch: int) -> tuple[DeviceRecord, str, SessionKeys]:
        """Raises UnknownDeviceError or RevokedError."""
        ...

    def prefetch(self, device_ids: Iterable[str]) -> None:
        """Refresh the records of these devices in one round trip (before a batch's lookups)."""
        ...


#: Called for each authentic reading before it is stored; raises PolicyDenied to refuse it.
Authorizer = Callable[[DeviceRecord, str, Reading], None]
#: Decides one authentic media object (``PostureService.authorize_media``); raises to refuse.
MediaAuthorizer = Callable[[DeviceRecord, str, MediaObject], None]


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


@dataclass(slots=True)
class _Session:
    record: DeviceRecord
    suite: AeadSuite
    keys: SessionKeys
    window: ReplayWindow
    topic: str
    ack_topic: str
    media_topic: str


class IngestProcessor:
    """Turns batches of raw messages into durably stored readings."""

    def __init__(
        self, store: HubStore, registry: SessionLookup, cfg: HubConfig, *,
        clock: Clock | None = None, authorizer: Authorizer | None = None, audit: AuditSink | None = None,
        media_authorizer: MediaAuthorizer | None = None,
        on_rejected: Callable[[str, str, int, datetime], None] | None = None,
        admission: Admission | None = None, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.registry = registry
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.authorizer = authorizer
        self.media_authorizer = media_authorizer
        self.audit = audit
        #: Told of each batch's rejections of a named device (device, reason, count, time): detection's input.
        self.on_rejected = on_rejected
        self.stats = IngestStats()
        #: Per-device and per-segment quotas, checked before a message costs an AEAD open or a row.
        self.admission = admission if admission is not None else admission_from_config(cfg)
        self._monotonic = monotonic
        #: Quota refusals not audited yet: (device, reason) -> (count, first seen).
        self._quota_pending: Counter[tuple[str, str]] = Counter()
        self._quota_first: datetime | None = None
        self._quota_audited_at = monotonic()
        #: Replay windows this process holds, with the version it last read or saved.
        self._windows: dict[tuple[str, int], WindowWrite] = {}
        #: (device, epoch) of the current batch known to have no saved window yet.
        self._no_saved_window: set[tuple[str, int]] = set()
        #: Suites this processor opens with instead of the registry's (same ids and wire format).
        self._suites: dict[str, AeadSuite] = {}
        if cfg.ascon_compiled:
            compiled = AsconAead128Suite(compiled=True)
            self._suites[compiled.name] = compiled

    def _window(self, device_id: str, epoch: int) -> ReplayWindow:
        key = (device_id, epoch)
        w = self._windows.get(key)
        if w is None:
            saved = None if key in self._no_saved_window else self.store.replay_window(device_id, epoch)
            if saved is None:
                w = WindowWrite(device_id, epoch, ReplayWindow(self.cfg.replay_window), None)
            else:
                w = WindowWrite(device_id, epoch, ReplayWindow(self.cfg.replay_window, saved[0], saved[1]), saved[2])
            self._windows[key] = w
        return w.window

    def _preload_windows(self, keys: set[tuple[str, int]]) -> None:
        """Read the saved windows of the batch's (device, epoch) not held yet in one round trip, not one
        each. Only saved windows are kept; the keys with none are remembered for this batch only (a
        batch of unknown device ids must not grow :attr:`_windows`)."""
        missing = sorted(k for k in keys if k not in self._windows)
        self._no_saved_window = set()
        if len(missing) < 2:
            return
        saved = self.store.replay_windows(missing)
        for key, got in saved.items():
            self._windows[key] = WindowWrite(key[0], key[1], ReplayWindow(self.cfg.replay_window, got[0], got[1]),
                                             got[2])
        self._no_saved_window = set(missing) - set(saved)

    def _session(self, device_id: str, epoch: int) -> _Session | str:
        """Everything ingest needs about (device, epoch), or the reason code it is refused with."""
        try:
            record, suite_name, keys = self.registry.session(device_id, epoch)
            suite = self._suites.get(suite_name) or get_suite(suite_name)
            return _Session(record, suite, keys, self._window(device_id, epoch),
                            telemetry_topic(record.segment, device_id), ack_topic(record.segment, device_id),
                            media_topic(record.segment, device_id))
        except IotGuardError as exc:
            return exc.code

    def process(self, batch: Sequence[Incoming]) -> BatchOutcome:
        """Process one batch; see the module docstring.

        Raises:
            StorageError: the batch could not be stored; acknowledge none of it.
        """
        now = self.clock.now()
        out = BatchOutcome()
        max_size = self.cfg.max_envelope_bytes
        max_media = self.cfg.max_media_envelope_bytes
        rejected: Counter[tuple[str, str]] = Counter()
        # Looked up once per (device, epoch) and batch, not per message.
        sessions: dict[tuple[str, int], _Session | str] = {}
        acked: dict[tuple[str, int], set[int]] = defaultdict(set)
        by_suite: dict[int, list[tuple[Incoming, Envelope, _Session]]] = defaultdict(list)
        decoded: list[tuple[Incoming, Envelope]] = []
        admit = self.admission.admit
        tick = self._monotonic()
        for msg in batch:
            try:
                limit = max_media if msg.topic.endswith(_MEDIA_SUFFIX) else max_size
                decoded.append((msg, decode_envelope(msg.payload, max_size=limit)))
            except MalformedError:
                rejected[("", "malformed")] += 1
        self.registry.prefetch({env.device_id for _m, env in decoded})
        self._preload_windows({(env.device_id, env.epoch) for _m, env in decoded})
        for msg, env in decoded:
            d = env.device_id
            key = (d, env.epoch)
            sess = sessions.get(key)
            if sess is None:
                sess = sessions[key] = self._session(d, env.epoch)
            if isinstance(sess, str):
                # unknown_device is counted without the claimed id, so junk ids
                # cannot bloat the rejection table.
                rejected[("" if sess == "unknown_device" else d, sess)] += 1
                continue
            if msg.topic != sess.topic and msg.topic != sess.media_topic:
                rejected[(d, "topic_mismatch")] += 1
                continue
            if env.suite_id != sess.suite.suite_id:
                rejected[(d, "forged")] += 1
                continue
            try:
                sess.window.check(env.seq)
            except DuplicateError:
                rejected[(d, "replay")] += 1
                acked[key].add(env.seq)  # stored before: acknowledge again so the device stops resending
                continue
            except ReplayError:
                rejected[(d, "replay")] += 1
                continue
            # The topic is the device's own, which the broker grants only to its
            # certificate: the quota charged is the sender's, not a forger's victim's.
            # Refused messages are not acknowledged, so a device keeps them and resends.
            over = admit(d, sess.record.segment, tick)
            if over is not None:
                rejected[(d, over)] += 1
                continue
            by_suite[sess.suite.suite_id].append((msg, env, sess))

        rows: list[dict[str, Any]] = []
        touched: set[tuple[str, int]] = set()
        arrived: dict[tuple[str, int, int], float] = {}
        authorize = self.authorizer
        max_fields = self.cfg.max_reading_fields
        for group in by_suite.values():
            suite = group[0][2].suite
            nonce_size = suite.nonce_size
            results = suite.open_batch([
                OpenRequest(sess.keys.uplink, make_nonce(env.epoch, env.seq, nonce_size),
                            associated_data(env.header, msg.topic), env.ciphertext)
                for msg, env, sess in group
            ])
            for (msg, env, sess), res in zip(group, results, strict=True):
                d, e, seq = env.device_id, env.epoch, env.seq
                if isinstance(res, Exception):
                    rejected[(d, "forged")] += 1
                    continue
                try:
                    sess.window.accept(seq)  # also catches duplicates inside one batch
                except ReplayError:
                    rejected[(d, "replay")] += 1
                    acked[(d, e)].add(seq)
                    continue
                touched.add((d, e))
                acked[(d, e)].add(seq)
                try:
                    if msg.topic == sess.media_topic:
                        media = decode_media_object(res, max_size=max_media)
                        if self.media_authorizer is None:
                            raise PolicyDenied("this hub does not accept media objects")
                        self.media_authorizer(sess.record, msg.topic, media)
                    else:
                        reading = decode_reading(res, max_size=max_size, max_fields=max_fields)
                        if authorize is not None:
                            authorize(sess.record, msg.topic, reading)
                except IotGuardError as exc:
                    rejected[(d, exc.code)] += 1
                    continue
                arrived[(d, e, seq)] = msg.arrived
                rows.append({"device_id": d, "epoch": e, "seq": seq, "topic": msg.topic,
                             "received_at": now, "body": res})

        windows = [self._windows[key] for key in sorted(touched)]
        try:
            inserted = self.store.store_batch(rows, windows, dict(rejected), now=now)
        except StorageError:
            # The in-memory windows already accepted this batch; forget them
            # so the retried batch is judged against what is really stored.
            for key in touched:
                self._windows.pop(key, None)
            raise
        done = time.monotonic()
        if len(inserted) != len(rows):
            # Stored meanwhile by another hub process: a replay here, still acknowledged.
            extra: Counter[tuple[str, str]] = Counter(
                (r["device_id"], "replay") for r in rows if (r["device_id"], r["epoch"], r["seq"]) not in inserted)
            self.store.count_rejections(dict(extra), now=now)
            rejected.update(extra)
        out.stored = len(inserted)
        out.latencies_ms = [(done - t) * 1000.0 for k, t in arrived.items() if t and k in inserted]
        for key, seqs in acked.items():
            sess = sessions.get(key)
            if isinstance(sess, _Session):
                out.acks[(sess.ack_topic, key[1])] = encode_ack(key[0], key[1], seqs, sess.keys.downlink)
        for (_d, reason), n in rejected.items():
            out.rejected[reason] += n
        if (rejected or self._quota_pending) and self.audit is not None:
            self._audit_rejections(rejected, now, tick)
        if self.on_rejected is not None:
            for (d, reason), n in sorted(rejected.items()):
                if d:
                    self.on_rejected(d, reason, n, now)
        self.stats.add(out)
        return out

    def _audit_rejections(self, rejected: Counter[tuple[str, str]], now: datetime, tick: float) -> None:
        """One aggregated entry per (device, reason): per batch, but quota refusals per
        :data:`QUOTA_AUDIT_INTERVAL_S` at most. The data is already committed, so a failing
        audit write is logged, not fatal."""
        if self.audit is None:
            return
        entries = []
        for (d, reason), n in sorted(rejected.items()):
            if reason in _QUOTA_REASONS:
                self._quota_pending[(d, reason)] += n
                self._quota_first = self._quota_first or now
            else:
                entries.append(rejected_envelopes(d or "unattributed", reason, n, now, now))
        if self._quota_pending and tick - self._quota_audited_at >= QUOTA_AUDIT_INTERVAL_S:
            first = self._quota_first or now
            entries += [rejected_envelopes(d, reason, n, first, now)
                        for (d, reason), n in sorted(self._quota_pending.items())]
            self._quota_pending.clear()
            self._quota_first = None
            self._quota_audited_at = tick
        if not entries:
            return
        try:
            self.audit.record_many(entries)
        except IotGuardError as exc:
            log.error("could not audit %d rejection entries: %s", len(entries), exc.code)
