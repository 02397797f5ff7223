"""Secure-aggregation rounds: the hub's coordinator and the device's participant (no I/O).

A round runs in four phases; devices poll the hub and answer with signed
device requests (action ``aggregate``, body ``{round, step, message}``, the
message canonical CBOR):

1. ``advertise``: each device sends its mask and encryption public keys.
   When every invited device has, or the phase's deadline passes, the
   devices that advertised (U1) form the round: indices by sorted device id,
   the SecAgg+ graph from the round id (:func:`~iotguard.analytics.secagg.harary_neighbours`).
2. ``share``: each device polls for its neighbours' keys and sends a sealed
   share box per neighbour (the hub relays boxes it cannot open). U2 = the
   devices whose boxes arrived.
3. ``masked``: each device polls for the boxes addressed to it, opens them
   (a box that does not open is refused with ``share_forged``), and sends
   its masked vector, masked only with peers in U2. U3 = the senders.
4. ``unmask``: each device in U3 polls for which of its peers survived and
   which dropped, and sends seed shares of survivors and key shares of the
   dropped; the hub then unmasks the sum with
   :class:`~iotguard.analytics.secagg.Aggregator`.

The hub holds public keys, sealed boxes, masked vectors and unmasking
shares, never a device's value. Every message is parsed strictly (sizes,
types, indices); a device may submit only as itself (the holder of an
unmasking share is the authenticated sender), once per phase.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import cbor2
import numpy as np

from iotguard.analytics.secagg import (
    MAX_DEVICES,
    PRIME,
    SHARE_BYTES,
    AggregationError,
    Aggregator,
    Device,
    Share,
    Vector,
    harary_neighbours,
)
from iotguard.errors import ConfigError

__all__ = ["PHASES", "Participant", "RoundCoordinator", "RoundSpec", "decode_message", "encode_message"]

PHASES = ("advertise", "share", "masked", "unmask", "done", "failed")
#: Largest message a device sends or receives in a round.
MAX_MESSAGE_BYTES = 65_000
#: Most neighbours a device may have: its share boxes must fit one message (use SecAgg+ beyond).
MAX_DEGREE = 600
_BOX_BYTES = 8 + 2 * SHARE_BYTES + 16


def encode_message(obj: Mapping[str, Any]) -> bytes:
    return cbor2.dumps(dict(obj), canonical=True)


def decode_message(data: bytes, keys: set[str]) -> dict[str, Any]:
    """A CBOR map with exactly ``keys``.

    Raises:
        AggregationError: ``message_malformed``.
    """
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_MESSAGE_BYTES:
        raise AggregationError("message_malformed", "too large")
    try:
        obj = cbor2.loads(bytes(data))
    except (cbor2.CBORDecodeError, ValueError, RecursionError, MemoryError):
        raise AggregationError("message_malformed", "not CBOR") from None
    if not isinstance(obj, dict) or set(obj) != keys:
        raise AggregationError("message_malformed", f"expected keys {sorted(keys)}")
    return obj


def _index_list(v: Any, n: int) -> list[int]:
    if not isinstance(v, list) or len(v) > n or not all(isinstance(i, int) and 0 <= i < n for i in v):
        raise AggregationError("message_malformed", "bad index list")
    return v


@dataclass(frozen=True)
class RoundSpec:
    """What an operator starts: the invited devices, vector length, graph degree, threshold, timeouts.

    ``degree`` 0 means every device is every other's neighbour; ``threshold``
    0 means ``floor(holders / 2) + 1`` (holders: a device and its neighbours).
    """

    devices: tuple[str, ...]
    dims: int
    degree: int = 0
    threshold: int = 0
    phase_timeout: timedelta = timedelta(minutes=5)

    def validate(self) -> None:
        """Raises :class:`ConfigError` with the reason."""
        if not 3 <= len(self.devices) <= MAX_DEVICES or len(set(self.devices)) != len(self.devices):
            raise ConfigError("a round needs 3..65536 distinct devices")
        if not 1 <= self.dims <= (MAX_MESSAGE_BYTES - 64) // 4:
            raise ConfigError(f"dims must be 1..{(MAX_MESSAGE_BYTES - 64) // 4} over the device channel")
        if self.degree < 0 or self.degree % 2 or self.threshold < 0:
            raise ConfigError("degree must be even (0: everyone) and threshold >= 0")
        n = len(self.devices)
        if (self.degree if 0 < self.degree < n - 1 else n - 1) > MAX_DEGREE:
            raise ConfigError(f"at most {MAX_DEGREE} neighbours per device: give a SecAgg+ degree for this fleet")


@dataclass
class _State:
    phase: str = "advertise"
    phase_started: datetime | None = None
    keys: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)
    boxes: dict[int, dict[int, bytes]] = field(default_factory=dict)  # recipient -> sender -> box
    sharers: set[int] = field(default_factory=set)
    unmask_from: set[int] = field(default_factory=set)
    shares: list[Share] = field(default_factory=list)
    result: Vector | None = None
    reason: str = ""


class RoundCoordinator:
    """The hub's side of one round (held by the hub's aggregation service).

    Args:
        round_id: Public random id (also the graph's seed and the boxes' associated data).
        spec: The round's parameters.
        now: When the round starts.
    """

    def __init__(self, round_id: bytes, spec: RoundSpec, now: datetime) -> None:
        spec.validate()
        self.round_id = round_id
        self.spec = spec
        self.s = _State(phase_started=now)
        self.agg: Aggregator | None = None
        self.members: list[str] = []

    @property
    def phase(self) -> str:
        return self.s.phase

    def _expect(self, device_id: str, phase: str) -> int:
        if self.s.phase != phase:
            raise AggregationError("wrong_phase", f"round is in {self.s.phase}, not {phase}")
        if device_id not in self.s.index:
            raise AggregationError("not_in_round", device_id)
        return self.s.index[device_id]

    def tick(self, now: datetime) -> None:
        """Close the current phase when everyone expected has answered or its deadline passed."""
        assert self.s.phase_started is not None
        late = now - self.s.phase_started >= self.spec.phase_timeout
        st = self.s
        if st.phase == "advertise" and (late or len(st.keys) == len(self.spec.devices)):
            self._start_share(now)
        elif st.phase == "share" and (late or len(st.sharers) == len(self.members)):
            self._start_masked(now)
        elif st.phase == "masked" and self.agg is not None and (late or len(self.agg.masked) == len(st.sharers)):
            self._next(now, "unmask")
        elif st.phase == "unmask" and self.agg is not None and (late or st.unmask_from == set(self.agg.masked)):
            self._finish(now)

    def _next(self, now: datetime, phase: str) -> None:
        self.s.phase, self.s.phase_started = phase, now

    def _fail(self, now: datetime, reason: str) -> None:
        self.s.reason = reason
        self._next(now, "failed")

    def _start_share(self, now: datetime) -> None:
        self.members = sorted(self.s.keys)
        n = len(self.members)
        if n < 3:
            self._fail(now, "too_few_devices")
            return
        self.s.index = {d: i for i, d in enumerate(self.members)}
        degree = self.spec.degree if 0 < self.spec.degree < n - 1 else n - 1
        graph = harary_neighbours(n, degree, self.round_id)
        t = self.spec.threshold or (degree + 1) // 2 + 1
        try:
            self.agg = Aggregator(n, t, self.spec.dims, graph)
        except ConfigError:
            self._fail(now, "threshold_invalid")
            return
        self._next(now, "share")

    def _start_masked(self, now: datetime) -> None:
        assert self.agg is not None
        for i in sorted(self.s.sharers):
            self.agg.add_public_key(i, self.s.keys[self.members[i]][0])
        if len(self.s.sharers) < self.agg.t:
            self._fail(now, "too_few_survivors")
            return
        self._next(now, "masked")

    def _finish(self, now: datetime) -> None:
        assert self.agg is not None
        try:
            self.s.result = self.agg.unmask(self.s.shares)
        except AggregationError as exc:
            self._fail(now, exc.reason)
            return
        self._next(now, "done")

    # -- device steps ---------------------------------------------------------------------------

    def advertise(self, device_id: str, message: bytes, now: datetime) -> None:
        """Phase 1: a device's mask and encryption public keys (32 bytes each)."""
        if self.s.phase != "advertise":
            raise AggregationError("wrong_phase", f"round is in {self.s.phase}, not advertise")
        if device_id not in self.spec.devices:
            raise AggregationError("not_in_round", device_id)
        if device_id in self.s.keys:
            raise AggregationError("message_duplicate", "already advertised")
        m = decode_message(message, {"mask_key", "encryption_key"})
        if not all(isinstance(m[k], bytes) and len(m[k]) == 32 for k in m):
            raise AggregationError("public_key_malformed", "keys are 32 bytes")
        self.s.keys[device_id] = (m["mask_key"], m["encryption_key"])
        self.tick(now)

    def poll(self, device_id: str, now: datetime) -> dict[str, Any]:
        """What the device needs for the current phase."""
        self.tick(now)
        st = self.s
        if st.phase in ("advertise", "done", "failed") or device_id not in st.index:
            return {"phase": st.phase, **({"reason": st.reason} if st.reason else {})}
        assert self.agg is not None
        me = st.index[device_id]
        peers = self.agg.peers(me)
        if st.phase == "share":
            return {"phase": "share", "index": me, "n": len(self.members), "t": self.agg.t, "dims": self.spec.dims,
                    "peers": [[p, *st.keys[self.members[p]]] for p in peers]}
        if st.phase == "masked":
            return {"phase": "masked", "boxes": [[s, b] for s, b in sorted(st.boxes.get(me, {}).items())
                                                 if s in st.sharers]}
        survivors = set(self.agg.masked)
        return {"phase": "unmask",
                "survivors": sorted(p for p in peers if p in survivors) + ([me] if me in survivors else []),
                "dropped": sorted(p for p in peers if p in st.sharers and p not in survivors)}

    def submit_boxes(self, device_id: str, message: bytes, now: datetime) -> None:
        """Phase 2: one sealed share box per neighbour."""
        me = self._expect(device_id, "share")
        assert self.agg is not None
        if me in self.s.sharers:
            raise AggregationError("message_duplicate", "boxes already sent")
        boxes = decode_message(message, {"boxes"})["boxes"]
        peers = set(self.agg.peers(me))
        if not isinstance(boxes, list) or len(boxes) != len(peers):
            raise AggregationError("share_malformed", "one box per neighbour")
        got: dict[int, bytes] = {}
        for item in boxes:
            if (not isinstance(item, list) or len(item) != 2 or item[0] not in peers or item[0] in got
                    or not isinstance(item[1], bytes) or len(item[1]) != _BOX_BYTES):
                raise AggregationError("share_malformed", "box for a non-neighbour, twice, or of the wrong size")
            got[item[0]] = item[1]
        for h, box in got.items():
            self.s.boxes.setdefault(h, {})[me] = box
        self.s.sharers.add(me)
        self.tick(now)

    def submit_masked(self, device_id: str, message: bytes, now: datetime) -> None:
        """Phase 3: the device's masked vector (little-endian uint32)."""
        me = self._expect(device_id, "masked")
        assert self.agg is not None
        if me not in self.s.sharers:
            raise AggregationError("masked_input_unexpected", "device did not share")
        raw = decode_message(message, {"vector"})["vector"]
        if not isinstance(raw, bytes) or len(raw) != 4 * self.spec.dims:
            raise AggregationError("masked_input_malformed", "wrong length")
        self.agg.add_masked(me, np.frombuffer(raw, dtype="<u4").astype(np.uint32))
        self.tick(now)

    def submit_unmask(self, device_id: str, message: bytes, now: datetime) -> None:
        """Phase 4: the device's shares of its surviving peers' seeds and dropped peers' keys."""
        me = self._expect(device_id, "unmask")
        assert self.agg is not None
        if me not in self.agg.masked:
            raise AggregationError("unmask_unexpected", "device did not send a masked vector")
        if me in self.s.unmask_from:
            raise AggregationError("message_duplicate", "unmask shares already sent")
        items = decode_message(message, {"shares"})["shares"]
        if not isinstance(items, list) or len(items) > 2 * len(self.agg.peers(me)) + 1:
            raise AggregationError("share_malformed", "too many shares")
        shares = []
        for item in items:
            if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], int)
                    or item[1] not in ("key", "seed", "pair") or not isinstance(item[2], bytes)
                    or len(item[2]) != SHARE_BYTES):
                raise AggregationError("share_malformed", "share is [owner, key|seed|pair, 33 bytes]")
            y = int.from_bytes(item[2], "big")
            if y >= PRIME:
                raise AggregationError("share_malformed", "share out of range")
            # the holder is the authenticated sender: a device cannot hand in shares as another
            shares.append(Share(item[0], me, item[1], y))
        self.s.shares.extend(shares)
        self.s.unmask_from.add(me)
        self.tick(now)

    def result(self) -> dict[str, Any]:
        """The round's state; the sum once done (``survivors`` is how many values it adds up)."""
        out: dict[str, Any] = {"phase": self.s.phase, "invited": len(self.spec.devices),
                               "members": len(self.members), "sharers": len(self.s.sharers)}
        if self.agg is not None:
            out["survivors"] = len(self.agg.masked)
            out["threshold"] = self.agg.t
        if self.s.reason:
            out["reason"] = self.s.reason
        if self.s.result is not None:
            out["sum"] = [int(x) for x in self.s.result]
        return out


class Participant:
    """A device's side of one round: answers each phase's poll with its next message.

    Args:
        round_id: The round.
        value: The device's vector (integers modulo 2^32).
    """

    def __init__(self, round_id: bytes, value: Vector) -> None:
        self.round_id = round_id
        self._value = np.asarray(value, dtype=np.uint32)
        self._device: Device | None = None
        self._keys = Device(0, self._value)  # keys are made now; the index is learnt in the share phase
        self._peers: dict[int, tuple[bytes, bytes]] = {}
        self._t = 0  # the round's threshold, from the share poll
        self._sharers: list[int] = []
        self.done: set[str] = set()

    def advertise(self) -> bytes:
        self.done.add("advertise")
        return encode_message({"mask_key": self._keys.public_key, "encryption_key": self._keys.encryption_key})

    def answer(self, poll: Mapping[str, Any]) -> tuple[str, bytes] | None:
        """The (step, message) for the phase ``poll`` reports, or None when there is nothing to send.

        Raises:
            AggregationError: a malformed poll, a box that does not open, an inconsistent unmask request.
        """
        phase = poll.get("phase")
        if phase in self.done or phase not in ("share", "masked", "unmask"):
            return None
        self.done.add(str(phase))
        if phase == "share":
            return "shares", self._shares(poll)
        if phase == "masked":
            return "masked", self._masked(poll)
        d = self._device
        if d is None:
            raise AggregationError("wrong_phase", "unmask before sharing")
        n = len(self._peers) + 1
        survivors = _index_list(poll.get("survivors"), 1 << 16)
        dropped = _index_list(poll.get("dropped"), 1 << 16)
        if len(survivors) + len(dropped) > n:
            raise AggregationError("message_malformed", "more peers than the round gave")
        if len(survivors) < self._t:  # Bonawitz et al.: below t survivors the seeds would unmask a too-small sum
            raise AggregationError("too_few_survivors", f"{len(survivors)} of threshold {self._t}")
        shares = d.unmask_shares(survivors, dropped)
        return "unmask", encode_message({"shares": [[s.owner, s.kind, s.y.to_bytes(SHARE_BYTES, "big")]
                                                    for s in shares]})

    def _shares(self, poll: Mapping[str, Any]) -> bytes:
        me, t, peers = poll.get("index"), poll.get("t"), poll.get("peers")
        if not (isinstance(me, int) and isinstance(t, int) and isinstance(peers, list) and poll.get("dims")
                == len(self._value)):
            raise AggregationError("message_malformed", "share poll")
        for p in peers:
            if not (isinstance(p, list) and len(p) == 3 and isinstance(p[0], int) and p[0] != me
                    and all(isinstance(k, bytes) and len(k) == 32 for k in p[1:])):
                raise AggregationError("message_malformed", "peer entry")
            self._peers[p[0]] = (p[1], p[2])
        d = self._keys
        d.index = me
        self._device, self._t = d, t
        shares = d.shares_for_peers(sorted(self._peers), t)
        for s in shares:
            if s.holder == me:
                d.receive_share(s)
        boxes = d.seal_shares(shares, {p: k[1] for p, k in self._peers.items()}, self.round_id)
        return encode_message({"boxes": [[h, b] for h, b in sorted(boxes.items())]})

    def _masked(self, poll: Mapping[str, Any]) -> bytes:
        d = self._device
        boxes = poll.get("boxes")
        if d is None or not isinstance(boxes, list):
            raise AggregationError("message_malformed", "masked poll")
        sharers = []
        for item in boxes:
            if not (isinstance(item, list) and len(item) == 2 and item[0] in self._peers
                    and isinstance(item[1], bytes)):
                raise AggregationError("message_malformed", "box entry")
            d.open_shares(item[0], item[1], self._peers[item[0]][1], self.round_id)
            sharers.append(item[0])
        self._sharers = sharers
        y = d.masked_input({p: self._peers[p][0] for p in sharers})
        return encode_message({"vector": y.astype("<u4").tobytes()})


def new_round_id() -> bytes:
    """A fresh public round id."""
    return secrets.token_bytes(16)


def run_locally(values: Sequence[Vector], spec_degree: int, drop: set[int], now: datetime) -> dict[str, Any]:
    """Run one round in process (``iotguard aggregate run --secure`` and the benchmark); ``drop``: devices
    that vanish after sharing. Returns the coordinator's result, the bytes each step carried (``bytes``: sent
    by devices; ``received``: poll replies) and the CPU seconds the hub and the devices computed."""
    dims = len(values[0])
    ids = tuple(f"sim-{i:05d}" for i in range(len(values)))
    rid = new_round_id()
    clock = {"hub": 0.0, "devices": 0.0}

    def timed(who: str, f: Any, *args: Any) -> Any:
        t0 = time.process_time()  # CPU seconds: the cost, not the shared machine's load
        try:
            return f(*args)
        finally:
            clock[who] += time.process_time() - t0

    coord = timed("hub", RoundCoordinator, rid, RoundSpec(ids, dims, degree=spec_degree), now)
    parts = {d: timed("devices", Participant, rid, v) for d, v in zip(ids, values, strict=True)}
    sent: dict[str, int] = {"advertise": 0, "shares": 0, "masked": 0, "unmask": 0}
    received = 0
    for d in ids:
        msg = timed("devices", parts[d].advertise)
        sent["advertise"] += len(msg)
        timed("hub", coord.advertise, d, msg, now)
    steps = {"shares": coord.submit_boxes, "masked": coord.submit_masked, "unmask": coord.submit_unmask}
    at = now
    for phase in ("share", "masked", "unmask"):
        for i, d in enumerate(ids):
            if phase != "share" and i in drop:
                continue
            poll = timed("hub", coord.poll, d, at)
            received += len(encode_message(poll))
            out = timed("devices", parts[d].answer, poll)
            if out is not None:
                sent[out[0]] += len(out[1])
                timed("hub", steps[out[0]], d, out[1], at)
        if coord.phase == phase:  # the dropped never answer: the deadline closes the phase
            at += coord.spec.phase_timeout
            timed("hub", coord.tick, at)
    return {**coord.result(), "bytes": sent, "received": received, "hub_s": clock["hub"],
            "devices_s": clock["devices"]}
