"""Sending media objects: sealed like readings, on the device's media topic.

The envelope is sealed under the device's current session key with the
same sequence as its telemetry (so no nonce repeats) and the media topic in
the associated data (so it does not open as telemetry).
"""

from __future__ import annotations

from collections.abc import Iterable

from iotguard.agent.runtime import Agent
from iotguard.channel import media_topic
from iotguard.wire import MediaObject, encode_media_object

__all__ = ["send_media"]


def send_media(agent: Agent, objects: Iterable[MediaObject]) -> list[int]:
    """Seal and publish media objects; returns their sequence numbers.

    Raises:
        EnrollmentError: the agent is not enrolled.
        UsageLimitError: the session key is used up (re-key first).
    """
    sealer = agent.sealer
    topic = media_topic(sealer.segment, agent.device_id)
    seqs = []
    for obj in objects:
        seq, envelope = sealer.seal(encode_media_object(obj), topic=topic)
        agent.publish_raw(topic, envelope)
        seqs.append(seq)
    return seqs
