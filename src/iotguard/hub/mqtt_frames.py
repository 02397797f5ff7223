"""Just enough of MQTT 3.1.1 to enforce identity and topic access in front of a broker (no I/O).

The embedded broker's TLS front (:mod:`iotguard.hub.broker_front`) reads
every packet a client sends. It must rewrite ``CONNECT`` (the identity
comes from the client certificate, never from the packet), check the topic
of every ``PUBLISH`` and the filters of every ``SUBSCRIBE`` against the
access list, and answer for the packets it refuses. Everything else is
forwarded as framed. Parsing is strict and bounded; every failure is a
:class:`~iotguard.errors.MalformedError` (OASIS MQTT 3.1.1, sections 2-3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from iotguard.errors import MalformedError

__all__ = [
    "CONNACK_NOT_AUTHORIZED",
    "CONNACK_UNACCEPTABLE_PROTOCOL",
    "CONNECT",
    "PUBLISH",
    "SUBACK",
    "SUBACK_FAILURE",
    "SUBSCRIBE",
    "AccessList",
    "Connect",
    "encode_connack",
    "encode_connect",
    "encode_puback",
    "encode_remaining_length",
    "encode_suback",
    "parse_connect",
    "parse_publish",
    "parse_suback",
    "parse_subscribe",
    "topic_matches",
]

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
CONNACK_UNACCEPTABLE_PROTOCOL = 0x01
CONNACK_NOT_AUTHORIZED = 0x05
SUBACK_FAILURE = 0x80
_MAX_REMAINING_LENGTH = 268_435_455


def encode_remaining_length(n: int) -> bytes:
    """The variable-length ``Remaining Length`` field (section 2.2.3).

    Raises:
        MalformedError: negative or above the MQTT maximum.
    """
    if not 0 <= n <= _MAX_REMAINING_LENGTH:
        raise MalformedError("remaining length out of range")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _frame(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_remaining_length(len(body)) + body


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedError("MQTT packet truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        raw = self.binary()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedError("MQTT string is not UTF-8") from None
        if "\x00" in value:
            raise MalformedError("MQTT string contains NUL")
        return value

    def done(self) -> bool:
        return self.pos == len(self.data)


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise MalformedError("MQTT string too long")
    return len(raw).to_bytes(2, "big") + raw


@dataclass(frozen=True)
class Connect:
    """A CONNECT packet (protocol level 4 only)."""

    client_id: str
    keepalive: int
    clean_session: bool
    will_topic: str | None = None
    will_message: bytes = b""
    will_qos: int = 0
    will_retain: bool = False
    username: str | None = None
    password: bytes | None = None

    def with_identity(self, client_id: str, username: str, password: bytes) -> Connect:
        """The same CONNECT with the client id, username and password replaced."""
        return replace(self, client_id=client_id, username=username, password=password)


def parse_connect(body: bytes) -> Connect:
    """Parse the body of a CONNECT packet.

    Raises:
        MalformedError: not MQTT 3.1.1 (``reason`` in the message), bad
            flags, or a truncated or over-long body.
    """
    cur = _Cursor(body)
    if cur.text() != "MQTT" or cur.take(1) != b"\x04":
        raise MalformedError("unsupported MQTT protocol (only 3.1.1)")
    flags = cur.take(1)[0]
    keepalive = cur.u16()
    if flags & 0x01:
        raise MalformedError("CONNECT reserved flag set")
    will = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    if will_qos == 3 or (not will and (will_qos or flags & 0x20)):
        raise MalformedError("bad CONNECT will flags")
    if not flags & 0x80 and flags & 0x40:
        raise MalformedError("CONNECT password without username")
    client_id = cur.text()
    will_topic = cur.text() if will else None
    will_message = cur.binary() if will else b""
    username = cur.text() if flags & 0x80 else None
    password = cur.binary() if flags & 0x40 else None
    if not cur.done():
        raise MalformedError("trailing bytes after CONNECT payload")
    return Connect(client_id, keepalive, bool(flags & 0x02), will_topic, will_message, will_qos,
                   bool(flags & 0x20), username, password)


def encode_connect(c: Connect) -> bytes:
    """A whole CONNECT packet."""
    flags = (0x02 if c.clean_session else 0) | (0x80 if c.username is not None else 0) | \
        (0x40 if c.password is not None else 0)
    payload = _text(c.client_id)
    if c.will_topic is not None:
        flags |= 0x04 | (c.will_qos << 3) | (0x20 if c.will_retain else 0)
        payload += _text(c.will_topic) + len(c.will_message).to_bytes(2, "big") + c.will_message
    if c.username is not None:
        payload += _text(c.username)
    if c.password is not None:
        payload += len(c.password).to_bytes(2, "big") + c.password
    return _frame(CONNECT << 4, _text("MQTT") + bytes((4, flags)) + c.keepalive.to_bytes(2, "big") + payload)


def parse_publish(flags: int, body: bytes) -> tuple[str, int, int | None]:
    """Topic, QoS and packet id of a PUBLISH packet (the payload is not touched).

    Raises:
        MalformedError: QoS 3, a wildcard or empty topic, or a truncated header.
    """
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedError("PUBLISH with QoS 3")
    cur = _Cursor(body)
    topic = cur.text()
    if not topic or "+" in topic or "#" in topic:
        raise MalformedError("PUBLISH topic is empty or has a wildcard")
    packet_id = cur.u16() if qos else None
    return topic, qos, packet_id


def parse_subscribe(flags: int, body: bytes) -> tuple[int, list[tuple[str, int]]]:
    """Packet id and (filter, requested QoS) pairs of a SUBSCRIBE packet.

    Raises:
        MalformedError: wrong fixed-header flags, no filters, bad QoS or a truncated body.
    """
    if flags != 0x02:
        raise MalformedError("SUBSCRIBE fixed header flags must be 0010")
    cur = _Cursor(body)
    packet_id = cur.u16()
    filters: list[tuple[str, int]] = []
    while not cur.done():
        topic_filter = cur.text()
        qos = cur.take(1)[0]
        if not topic_filter or qos > 2:
            raise MalformedError("bad SUBSCRIBE filter or QoS")
        filters.append((topic_filter, qos))
    if not filters:
        raise MalformedError("SUBSCRIBE without filters")
    return packet_id, filters


def parse_suback(body: bytes) -> tuple[int, bytes]:
    """Packet id and return codes of a SUBACK packet.

    Raises:
        MalformedError: shorter than a packet id.
    """
    if len(body) < 2:
        raise MalformedError("SUBACK truncated")
    return int.from_bytes(body[:2], "big"), body[2:]


def encode_suback(packet_id: int, codes: bytes) -> bytes:
    """A whole SUBACK packet."""
    return _frame(SUBACK << 4, packet_id.to_bytes(2, "big") + codes)


def encode_puback(packet_id: int) -> bytes:
    """A whole PUBACK packet."""
    return _frame(PUBACK << 4, packet_id.to_bytes(2, "big"))


def encode_connack(return_code: int) -> bytes:
    """A whole CONNACK packet (no session present)."""
    return _frame(CONNACK << 4, bytes((0, return_code)))


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` with MQTT ``+`` and ``#`` wildcards."""
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, f in enumerate(f_parts):
        if f == "#":
            return i == len(f_parts) - 1
        if i >= len(t_parts) or (f != "+" and f != t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)


def _unshared(topic_filter: str) -> str:
    # ``$share/<group>/<filter>`` subscribes to ``<filter>`` (MQTT 5, and Mosquitto in 3.1.1).
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


class AccessList:
    """Per-identity topic grants, as in a Mosquitto ``acl_file``; deny by default.

    Args:
        grants: identity -> ``(access, topic filter)`` with access ``read``,
            ``write`` or ``readwrite`` (see :func:`iotguard.policy.acl.derive_device_acl`).
    """

    def __init__(self, grants: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        self._write = {who: tuple(t for a, t in g if a in ("write", "readwrite")) for who, g in grants.items()}
        self._read = {who: tuple(t for a, t in g if a in ("read", "readwrite")) for who, g in grants.items()}

    def identities(self) -> frozenset[str]:
        """Identities with at least one grant."""
        return frozenset(who for who in self._write.keys() | self._read.keys()
                         if self._write.get(who) or self._read.get(who))

    def may_publish(self, identity: str, topic: str) -> bool:
        """Whether ``identity`` may publish on the concrete ``topic``."""
        return any(topic_matches(g, topic) for g in self._write.get(identity, ()))

    def may_subscribe(self, identity: str, topic_filter: str) -> bool:
        """Whether ``identity`` may subscribe to ``topic_filter``.

        A filter is allowed when it equals a read grant, or names one
        concrete topic a read grant matches; a wildcard filter broader than
        every grant is refused.
        """
        wanted = _unshared(topic_filter)
        if not wanted:
            return False
        concrete = "+" not in wanted and "#" not in wanted
        return any(wanted == g or (concrete and topic_matches(g, wanted)) for g in self._read.get(identity, ()))
