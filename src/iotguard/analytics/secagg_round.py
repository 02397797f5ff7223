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
   which dropped, and sends seed shares of survivors and key shares (and
   pair seeds) of the dropped; the hub then unmasks the sum with
   :class:`~iotguard.analytics.secagg.Aggregator`.

Per-neighbour data travels as **fixed-width records** in one byte string,
in the order of an index list both sides know (ascending neighbour indices;
the poll's ``survivors`` and ``dropped``): 50-byte boxes, 17-byte shares,
16-byte pair seeds, with no per-record framing (docs/wire.md §10a).

The hub holds public keys, sealed boxes, masked vectors and unmasking
shares, never a device's value. Every message is parsed strictly (sizes,
types, indices); a device may submit only as itself (the holder of an
unmasking share is the authenticated sender), once per phase.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import cbor2
import numpy as np

from iotguard.analytics.secagg import (
    BOX_BYTES,
    MAX_DEVICES,
    PRIME,
    SECRET_BYTES,
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
#: Bytes of a mask public key and an encryption public key, side by side (one peer in a share poll).
_PEER_KEYS = 64


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
    """A strictly ascending list of indices below ``n`` (so each index appears once and the order is known)."""
    if (not isinstance(v, list) or len(v) > n or not all(type(i) is int and 0 <= i < n for i in v)
            or any(a >= b for a, b in itertools.pairwise(v))):
        raise AggregationError("message_malformed", "bad index list")
    return v


def _records(raw: Any, count: int, width: int, reason: str) -> list[bytes]:
    """``count`` fixed-width records from one byte string of exactly ``count * width`` bytes.

    Raises:
        AggregationError: ``reason`` when ``raw`` is not such a byte string.
    """
    if not isinstance(raw, bytes) or len(raw) != count * width:
        raise AggregationError(reason, f"expected {count} records of {width} bytes")
    return [raw[i:i + width] for i in range(0, len(raw), width)]


def _field_elements(raw: Any, count: int, reason: str) -> list[int]:
    """``count`` 17-byte big-endian shares, each below the field's prime."""
    ys = [int.from_bytes(r, "big") for r in _records(raw, count, SHARE_BYTES, reason)]
    if any(y >= PRIME for y in ys):
        raise AggregationError(reason, "share out of range")
    return ys


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

    def abandon(self, now: datetime, reason: str) -> None:
        """End the round as ``failed`` with ``reason`` (the hub cannot go on with it, e.g. its log does not
        replay)."""
        self._fail(now, reason)

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
                    "peers": list(peers), "keys": b"".join(b"".join(st.keys[self.members[p]]) for p in peers)}
        if st.phase == "masked":
            got = sorted((s, b) for s, b in st.boxes.get(me, {}).items() if s in st.sharers)
            return {"phase": "masked", "senders": [s for s, _ in got], "boxes": b"".join(b for _, b in got)}
        survivors, dropped = self._unmask_lists(me)
        return {"phase": "unmask", "survivors": survivors, "dropped": dropped}

    def _unmask_lists(self, me: int) -> tuple[list[int], list[int]]:
        """Whose seed shares (surviving peers and ``me``) and whose key shares (dropped peers) ``me`` sends."""
        assert self.agg is not None
        survivors = set(self.agg.masked)
        peers = self.agg.peers(me)
        return (sorted({p for p in peers if p in survivors} | ({me} & survivors)),
                sorted(p for p in peers if p in self.s.sharers and p not in survivors))

    def submit_boxes(self, device_id: str, message: bytes, now: datetime) -> None:
        """Phase 2: one sealed share box per neighbour, ``BOX_BYTES`` each, in ascending neighbour order."""
        me = self._expect(device_id, "share")
        assert self.agg is not None
        if me in self.s.sharers:
            raise AggregationError("message_duplicate", "boxes already sent")
        peers = self.agg.peers(me)
        boxes = _records(decode_message(message, {"boxes"})["boxes"], len(peers), BOX_BYTES, "share_malformed")
        for h, box in zip(peers, boxes, strict=True):
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
        """Phase 4: the device's shares of its surviving peers' seeds and dropped peers' keys, with the pair
        seeds of the dropped, as records in the order of its unmask poll's ``survivors`` and ``dropped``."""
        me = self._expect(device_id, "unmask")
        assert self.agg is not None
        if me not in self.agg.masked:
            raise AggregationError("unmask_unexpected", "device did not send a masked vector")
        if me in self.s.unmask_from:
            raise AggregationError("message_duplicate", "unmask shares already sent")
        m = decode_message(message, {"seed_shares", "key_shares", "pair_seeds"})
        survivors, dropped = self._unmask_lists(me)
        seeds = _field_elements(m["seed_shares"], len(survivors), "share_malformed")
        keys = _field_elements(m["key_shares"], len(dropped), "share_malformed")
        pairs = _records(m["pair_seeds"], len(dropped), SECRET_BYTES, "share_malformed")
        # the holder is the authenticated sender: a device cannot hand in shares as another
        shares = [*(Share(u, me, "seed", y) for u, y in zip(survivors, seeds, strict=True)),
                  *(Share(v, me, "key", y) for v, y in zip(dropped, keys, strict=True)),
                  *(Share(v, me, "pair", int.from_bytes(p, "big")) for v, p in zip(dropped, pairs, strict=True))]
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
        held = {(s.owner, s.kind): s.y for s in d.unmask_shares(survivors, dropped)}
        wanted = [*((u, "seed") for u in survivors), *((v, "key") for v in dropped), *((v, "pair") for v in dropped)]
        if any(w not in held for w in wanted):  # a peer this device holds nothing of, or did not mask with
            raise AggregationError("unmask_request_inconsistent", "asked for a share this device does not hold")
        out = {kind: b"".join(held[(o, k)].to_bytes(width, "big") for o, k in wanted if k == kind)
               for kind, width in (("seed", SHARE_BYTES), ("key", SHARE_BYTES), ("pair", SECRET_BYTES))}
        return "unmask", encode_message({"seed_shares": out["seed"], "key_shares": out["key"],
                                         "pair_seeds": out["pair"]})

    def _shares(self, poll: Mapping[str, Any]) -> bytes:
        me, n, t = poll.get("index"), poll.get("n"), poll.get("t")
        if not (type(me) is int and type(n) is int and type(t) is int and 0 <= me < n <= MAX_DEVICES
                and poll.get("dims") == len(self._value)):
            raise AggregationError("message_malformed", "share poll")
        peers = _index_list(poll.get("peers"), n)
        if me in peers or len(peers) > MAX_DEGREE:
            raise AggregationError("message_malformed", "peer list")
        keys = _records(poll.get("keys"), len(peers), _PEER_KEYS, "message_malformed")
        self._peers = {p: (k[:32], k[32:]) for p, k in zip(peers, keys, strict=True)}
        d = self._keys
        d.index = me
        self._device, self._t = d, t
        shares = d.shares_for_peers(peers, t)
        for s in shares:
            if s.holder == me:
                d.receive_share(s)
        boxes = d.seal_shares(shares, {p: k[1] for p, k in self._peers.items()}, self.round_id)
        return encode_message({"boxes": b"".join(boxes[h] for h in peers)})

    def _masked(self, poll: Mapping[str, Any]) -> bytes:
        d = self._device
        if d is None:
            raise AggregationError("message_malformed", "masked poll before the share poll")
        senders = _index_list(poll.get("senders"), MAX_DEVICES)
        if not set(senders) <= set(self._peers):
            raise AggregationError("message_malformed", "a box from a non-neighbour")
        for s, box in zip(senders, _records(poll.get("boxes"), len(senders), BOX_BYTES, "message_malformed"),
                          strict=True):
            d.open_shares(s, box, self._peers[s][1], self.round_id)
        sharers = senders
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
