"""Sealed telemetry channel: nonces, session keys, sealing, replay window, acks.

Pure protocol logic, no I/O: the agent and hub call it with bytes.

* Nonce: big-endian ``epoch`` (4 bytes) || ``seq`` (8 bytes), left-padded
  with zero bytes to the suite's nonce size. One key per (device, epoch)
  and a sequence that is persisted before use mean a nonce never repeats.
* Session keys: X25519 between a device key and a hub key, then HKDF-SHA256
  with the transcript hash as salt, giving an uplink AEAD key and a downlink
  MAC key (for the hub's end-to-end acknowledgements).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from iotguard.crypto import AeadSuite
from iotguard.errors import DuplicateError, IntegrityError, MalformedError, ReplayError, UsageLimitError
from iotguard.keys import KeyStore
from iotguard.wire import associated_data, encode_envelope, encode_header

__all__ = [
    "MEDIA_FILTER",
    "TELEMETRY_FILTER",
    "AckMessage",
    "ReplayWindow",
    "SequenceAllocator",
    "SessionKeys",
    "UplinkSealer",
    "ack_topic",
    "command_topic",
    "decode_ack",
    "decode_command",
    "encode_ack",
    "encode_command",
    "make_nonce",
    "media_topic",
    "session_info",
    "split_session_keys",
    "telemetry_topic",
]

TOPIC_PREFIX = "iotguard"
#: What the hub subscribes to: every segment's device telemetry.
TELEMETRY_FILTER = f"{TOPIC_PREFIX}/+/+/telemetry"
#: And every segment's device media objects (``iotguard.wire.media``).
MEDIA_FILTER = f"{TOPIC_PREFIX}/+/+/media"
_ACK_MAC_LEN = 16
_MAX_ACK_RANGES = 4096


def telemetry_topic(segment: str, device_id: str) -> str:
    """MQTT topic a device in ``segment`` publishes its telemetry to.

    Topics live under their segment so broker ACLs and policies can separate
    segments (micro-segmentation); see ``iotguard.policy.topics``.
    """
    return f"{TOPIC_PREFIX}/{segment}/{device_id}/telemetry"


def media_topic(segment: str, device_id: str) -> str:
    """MQTT topic a device publishes sealed media objects to (see ``iotguard.wire.media``)."""
    return f"{TOPIC_PREFIX}/{segment}/{device_id}/media"


def ack_topic(segment: str, device_id: str) -> str:
    """MQTT topic the hub publishes a device's end-to-end acknowledgements to."""
    return f"{TOPIC_PREFIX}/{segment}/{device_id}/ack"


def command_topic(segment: str, device_id: str) -> str:
    """MQTT topic the hub sends authenticated commands to a device on (e.g. consent configuration)."""
    return f"{TOPIC_PREFIX}/{segment}/{device_id}/cmd"


def make_nonce(epoch: int, seq: int, size: int) -> bytes:
    """Nonce for message ``seq`` of key ``epoch``."""
    return b"\x00" * (size - 12) + struct.pack(">IQ", epoch, seq)


def session_info(device_id: str, epoch: int, suite: str) -> bytes:
    """HKDF ``info`` binding the session keys to device, epoch and suite."""
    return b"iotguard-session-v1\x00" + f"{device_id}\x00{epoch}\x00{suite}".encode()


@dataclass(frozen=True)
class SessionKeys:
    """Keys of one (device, epoch): uplink AEAD key, downlink ack MAC key."""

    uplink: bytes
    downlink: bytes

    def __repr__(self) -> str:
        return "SessionKeys(<redacted>)"


def split_session_keys(material: bytes, key_size: int) -> SessionKeys:
    """Split HKDF output into the uplink key and a 32-byte downlink key."""
    if len(material) != key_size + 32:
        raise ValueError("session key material has the wrong length")
    return SessionKeys(material[:key_size], material[key_size:])


class SequenceAllocator:
    """Message sequence numbers that never repeat, even across reboots.

    The persistent counter in the key store is advanced in blocks of
    ``reserve``: the device writes "sequences up to N may have been used"
    before using them, so after a crash it resumes past N (skipping at most
    one block) and never reuses a nonce.
    """

    def __init__(self, keystore: KeyStore, counter_name: str, *, reserve: int = 1024) -> None:
        self._ks = keystore
        self._name = counter_name
        self._reserve = reserve
        self._next = keystore.counter(counter_name)
        self._limit = self._next

    def next(self) -> int:
        """Allocate the next sequence number."""
        if self._next >= self._limit:
            self._limit = self._ks.advance_counter(self._name, self._next + self._reserve)
        seq = self._next
        self._next += 1
        return seq

    @property
    def used(self) -> int:
        """Sequences handed out so far in this key epoch (upper bound)."""
        return self._next


class UplinkSealer:
    """Seals readings of one device under one key epoch."""

    def __init__(
        self, suite: AeadSuite, device_id: str, epoch: int, key: bytes, sequence: SequenceAllocator,
        *, segment: str = "default",
    ) -> None:
        self.suite = suite
        self.device_id = device_id
        self.epoch = epoch
        self.segment = segment
        self._key = key
        self._seq = sequence
        self._topic = telemetry_topic(segment, device_id)

    def __repr__(self) -> str:
        return f"UplinkSealer({self.suite.name}, {self.device_id!r}, epoch={self.epoch})"

    @property
    def topic(self) -> str:
        return self._topic

    def needs_rekey(self, margin: float = 0.9) -> bool:
        """True once the key has sealed ``margin`` of the suite's usage limit."""
        return self._seq.used >= int(self.suite.max_messages * margin)

    def seal(self, plaintext: bytes, *, topic: str | None = None) -> tuple[int, bytes]:
        """Seal one payload; returns ``(seq, envelope_bytes)``.

        ``topic`` (default: the telemetry topic) is bound into the associated
        data, so an envelope sealed for one topic does not open on another.
        Every topic shares the one sequence, so no nonce repeats under the key.

        Raises:
            UsageLimitError: the key reached the suite's usage limit.
        """
        seq = self._seq.next()
        if seq >= self.suite.max_messages:
            raise UsageLimitError(f"{self.suite.name} key for epoch {self.epoch} is used up; re-key")
        header = encode_header(self.suite.suite_id, self.device_id, self.epoch, seq)
        nonce = make_nonce(self.epoch, seq, self.suite.nonce_size)
        ct = self.suite.seal(self._key, nonce, associated_data(header, topic or self._topic), plaintext)
        return seq, encode_envelope(self.suite.suite_id, self.device_id, self.epoch, seq, ct)


class ReplayWindow:
    """Sliding anti-replay window over sequence numbers (RFC 4303 style).

    ``top`` is the highest sequence accepted; a bit per position records the
    last ``size`` sequences. Anything at or below ``top - size`` is refused.
    """

    __slots__ = ("_bits", "_mask", "size", "top")

    def __init__(self, size: int = 1024, top: int = -1, bitmap: bytes = b"") -> None:
        if size <= 0:
            raise ValueError("replay window size must be positive")
        self.size = size
        self.top = top
        self._mask = (1 << size) - 1
        self._bits = (int.from_bytes(bitmap, "big") & self._mask) if bitmap else 0

    def check(self, seq: int) -> None:
        """Raise if ``seq`` was seen or is too old; does not record it.

        Raises:
            DuplicateError: ``seq`` was already received (a :class:`ReplayError`).
            ReplayError: a sequence older than the window.
        """
        if seq > self.top:
            return
        offset = self.top - seq
        if offset >= self.size:
            raise ReplayError(f"sequence {seq} is older than the replay window")
        if (self._bits >> offset) & 1:
            raise DuplicateError(f"sequence {seq} was already received")

    def accept(self, seq: int) -> None:
        """Check and record ``seq``.

        Raises:
            ReplayError: as :meth:`check`.
        """
        self.check(seq)
        if seq > self.top:
            # A jump of a whole window or more (or the first sequence) leaves
            # nothing of the old bitmap inside the window: start afresh rather
            # than shift, so an authenticated envelope with a huge sequence
            # cannot make the integer grow by its jump (issue 10).
            shift = seq - self.top
            if self.top < 0 or shift >= self.size:
                self._bits = 1
            else:
                self._bits = ((self._bits << shift) | 1) & self._mask
            self.top = seq
        else:
            self._bits |= 1 << (self.top - seq)

    def bitmap(self) -> bytes:
        """Serialised bitmap (for persistence)."""
        return self._bits.to_bytes((self.size + 7) // 8, "big")

    def merge(self, top: int, bitmap: bytes) -> None:
        """Add what another holder of this window accepted (another hub process).

        The result refuses every sequence either window refuses: the union of
        both bitmaps, aligned at the higher ``top``. Merging is commutative and
        idempotent, so processes that merge each other's saved windows in any
        order converge and none of them forgets an accepted sequence.
        """
        other = ReplayWindow(self.size, top, bitmap)
        if other.top < 0:
            return
        if self.top < 0:
            self.top, self._bits = other.top, other._bits
            return
        high, low = (self, other) if self.top >= other.top else (other, self)
        shift = high.top - low.top
        low_bits = (low._bits << shift) & self._mask if shift < self.size else 0
        self._bits, self.top = high._bits | low_bits, high.top


@dataclass(frozen=True)
class AckMessage:
    """End-to-end acknowledgement: these sequences of ``epoch`` are durably stored."""

    device_id: str
    epoch: int
    ranges: tuple[tuple[int, int], ...]  # inclusive (first, last)

    def sequences(self) -> Iterable[int]:
        for first, last in self.ranges:
            yield from range(first, last + 1)


def _ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def encode_ack(device_id: str, epoch: int, seqs: Iterable[int], mac_key: bytes) -> bytes:
    """Encode and authenticate an ack: u32 epoch, u16 n, n x (u64 first, u64 last), 16-byte MAC."""
    ranges = _ranges(seqs)[:_MAX_ACK_RANGES]
    body = struct.pack(">IH", epoch, len(ranges)) + b"".join(struct.pack(">QQ", a, b) for a, b in ranges)
    mac = hmac.new(mac_key, b"iotguard-ack-v1\x00" + device_id.encode() + b"\x00" + body, hashlib.sha256)
    return body + mac.digest()[:_ACK_MAC_LEN]


def decode_ack(device_id: str, data: bytes, mac_key: bytes) -> AckMessage:
    """Verify and decode an ack.

    Raises:
        MalformedError: wrong shape or size.
        IntegrityError: the MAC does not verify.
    """
    if len(data) < 6 + _ACK_MAC_LEN or len(data) > 6 + 16 * _MAX_ACK_RANGES + _ACK_MAC_LEN:
        raise MalformedError("ack has the wrong size")
    body, mac = data[:-_ACK_MAC_LEN], data[-_ACK_MAC_LEN:]
    expect = hmac.new(mac_key, b"iotguard-ack-v1\x00" + device_id.encode() + b"\x00" + body, hashlib.sha256)
    if not hmac.compare_digest(expect.digest()[:_ACK_MAC_LEN], mac):
        raise IntegrityError("ack MAC does not verify")
    epoch, n = struct.unpack_from(">IH", body)
    if len(body) != 6 + 16 * n:
        raise MalformedError("ack length does not match its range count")
    ranges = tuple(struct.unpack_from(">QQ", body, 6 + 16 * i) for i in range(n))
    if any(a > b for a, b in ranges):
        raise MalformedError("ack range is inverted")
    return AckMessage(device_id, epoch, ranges)


_MAX_COMMAND_BYTES = 65536


def _command_mac(key: bytes, device_id: str, body: bytes) -> bytes:
    mac = hmac.new(key, b"iotguard-cmd-v1\x00" + device_id.encode() + b"\x00" + body, hashlib.sha256)
    return mac.digest()[:_ACK_MAC_LEN]


def encode_command(device_id: str, kind: str, payload: bytes, mac_key: bytes) -> bytes:
    """Encode and authenticate a hub-to-device command.

    Wire form: u8 kind length || kind (ASCII) || payload || 16-byte MAC, with
    MAC = HMAC-SHA256(downlink key, "iotguard-cmd-v1" 0 device_id 0 || everything before it)[:16].
    """
    k = kind.encode("ascii")
    if not 0 < len(k) < 64:
        raise MalformedError("command kind must be 1-63 ASCII characters")
    body = bytes((len(k),)) + k + payload
    return body + _command_mac(mac_key, device_id, body)


def decode_command(device_id: str, data: bytes, mac_key: bytes) -> tuple[str, bytes]:
    """Verify and decode a command; returns (kind, payload).

    Raises:
        MalformedError: wrong shape or size.
        IntegrityError: the MAC does not verify (forged or for another device).
    """
    if not 2 + _ACK_MAC_LEN <= len(data) <= _MAX_COMMAND_BYTES:
        raise MalformedError("command has the wrong size")
    body, mac = data[:-_ACK_MAC_LEN], data[-_ACK_MAC_LEN:]
    if not hmac.compare_digest(_command_mac(mac_key, device_id, body), mac):
        raise IntegrityError("command MAC does not verify")
    n = body[0]
    if not 0 < n < 64 or len(body) < 1 + n:
        raise MalformedError("command kind length is invalid")
    try:
        kind = body[1 : 1 + n].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedError("command kind is not ASCII") from None
    return kind, body[1 + n :]
