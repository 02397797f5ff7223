"""The MQTT topic layout: which topic belongs to which device and segment.

The layout is the bridge between topic strings and Cedar ``Topic`` entities.
Policies never parse topics; they compare the ``device`` and ``segment`` the
layout attached to a topic with the principal's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from iotguard.errors import ConfigError

__all__ = ["MAX_TOPIC_LENGTH", "TopicInfo", "TopicLayout", "check_identifier"]

#: Longest topic the engine will evaluate (longer ones are ``unknown``).
MAX_TOPIC_LENGTH: Final = 256

_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def check_identifier(kind: str, value: str) -> None:
    """Check that a device id or segment name is safe inside topics and ACL files.

    Raises:
        ConfigError: ``value`` is empty, too long, or contains characters
            other than letters, digits and ``._:-`` (notably ``/``, ``+``,
            ``#``, whitespace and newlines).
    """
    if not _IDENTIFIER.fullmatch(value):
        raise ConfigError(f"invalid {kind} {value!r}: use 1-64 of [A-Za-z0-9._:-]")


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What the layout knows about one topic.

    Attributes:
        topic: The topic string.
        kind: ``telemetry``, ``command``, ``attestation``, ``enroll``,
            ``broadcast`` or ``unknown``.
        device: Owning device id, if the topic belongs to one.
        segment: Segment the topic lives in, if any.
        direction: ``up`` (device to hub), ``down`` (hub to device) or
            ``none``.
    """

    topic: str
    kind: str
    device: str | None = None
    segment: str | None = None
    direction: str = "none"


@dataclass(frozen=True)
class TopicLayout:
    """Topic templates; ``{segment}`` and ``{device}`` are placeholders.

    The defaults put segment-scoped traffic under ``<prefix>/<segment>/`` and
    the device channels used for attestation and (re-)enrollment, which stay
    reachable from quarantine, under ``<prefix>/attest/`` and
    ``<prefix>/enroll/``.
    """

    prefix: str = "iotguard"

    def telemetry(self, segment: str, device: str) -> str:
        """Topic a device publishes sealed telemetry to."""
        return f"{self.prefix}/{segment}/{device}/telemetry"

    def media(self, segment: str, device: str) -> str:
        """Topic a device publishes sealed media objects to.

        Sensor data like telemetry (kind ``telemetry``, direction up): the
        same policies grant and quarantine it.
        """
        return f"{self.prefix}/{segment}/{device}/media"

    def command(self, segment: str, device: str) -> str:
        """Topic a device receives hub commands on."""
        return f"{self.prefix}/{segment}/{device}/cmd"

    def ack(self, segment: str, device: str) -> str:
        """Topic a device receives the hub's end-to-end acknowledgements on (a downlink, like commands)."""
        return f"{self.prefix}/{segment}/{device}/ack"

    def attestation(self, device: str) -> tuple[str, str]:
        """(evidence topic the device publishes, challenge topic it subscribes)."""
        return f"{self.prefix}/attest/{device}/evidence", f"{self.prefix}/attest/{device}/challenge"

    def enrollment(self, device: str) -> tuple[str, str]:
        """(request topic the device publishes, reply topic it subscribes)."""
        return f"{self.prefix}/enroll/{device}/request", f"{self.prefix}/enroll/{device}/reply"

    def broadcast(self, segment: str) -> str:
        """Segment-wide broadcast topic (no default policy grants it)."""
        return f"{self.prefix}/{segment}/broadcast"

    def device_topics(self, segment: str, device: str) -> list[str]:
        """Every topic the templates give ``device`` when it sits in ``segment``."""
        return [
            self.telemetry(segment, device),
            self.media(segment, device),
            self.command(segment, device),
            self.ack(segment, device),
            *self.attestation(device),
            *self.enrollment(device),
        ]

    def parse(self, topic: str) -> TopicInfo:
        """Classify ``topic``; anything not matching a template is ``unknown``.

        Wildcard filters (``+``, ``#``) and over-long topics are ``unknown``
        too, so no policy that keys on ``kind`` can grant them.
        """
        if len(topic) > MAX_TOPIC_LENGTH or "+" in topic or "#" in topic or "\x00" in topic:
            return TopicInfo(topic, "unknown")
        parts = topic.split("/")
        if not parts or parts[0] != self.prefix:
            return TopicInfo(topic, "unknown")
        rest = parts[1:]
        if len(rest) == 3 and rest[0] == "attest" and rest[2] in ("evidence", "challenge"):
            return self._owned(topic, "attestation", rest[1], None, rest[2] == "evidence")
        if len(rest) == 3 and rest[0] == "enroll" and rest[2] in ("request", "reply"):
            return self._owned(topic, "enroll", rest[1], None, rest[2] == "request")
        if len(rest) == 3 and rest[2] in ("telemetry", "media", "cmd", "ack"):
            up = rest[2] in ("telemetry", "media")
            return self._owned(topic, "telemetry" if up else "command", rest[1], rest[0], up)
        if len(rest) == 2 and rest[1] == "broadcast" and _IDENTIFIER.fullmatch(rest[0]):
            return TopicInfo(topic, "broadcast", None, rest[0])
        return TopicInfo(topic, "unknown")

    @staticmethod
    def _owned(topic: str, kind: str, device: str, segment: str | None, up: bool) -> TopicInfo:
        if not _IDENTIFIER.fullmatch(device) or (segment is not None and not _IDENTIFIER.fullmatch(segment)):
            return TopicInfo(topic, "unknown")
        return TopicInfo(topic, kind, device, segment, "up" if up else "down")
