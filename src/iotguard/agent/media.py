"""Sending media objects: sealed like readings, on the device's media topic.

The envelope is sealed under the device's current session key with the
same sequence as its telemetry (so no nonce repeats) and the media topic in
the associated data (so it does not open as telemetry).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from iotguard.agent.runtime import Agent
from iotguard.channel import media_topic
from iotguard.errors import EnrollmentError
from iotguard.wire import MediaObject, encode_media_object

if TYPE_CHECKING:
    from iotguard.media.audio import Audio
    from iotguard.media.image import Frame

__all__ = ["collect_media", "send_media"]


def send_media(agent: Agent, objects: Iterable[MediaObject]) -> list[int]:
    """Seal media objects, keep each in the outbox until the hub acknowledges it, and publish it on the
    media topic; returns their sequence numbers.

    Raises:
        EnrollmentError: the agent is not enrolled.
        UsageLimitError: the session key is used up (re-key first).
        StorageError: an object was refused at capture (outbox or sequence counter not writable).
    """
    return [_keep_and_send(agent, obj) for obj in objects]


def _keep_and_send(agent: Agent, obj: MediaObject, kept: Callable[[], None] | None = None) -> int:
    return agent.keep_and_send(encode_media_object(obj), topic=media_topic(agent.sealer.segment, agent.device_id),
                               kept=kept)


def collect_media(agent: Agent, stream: str, media: Audio | Frame, ts_ms: int | None = None,
                  ) -> tuple[list[int], list[int]]:
    """Run a clip or frame through the device's media pipeline and send what may leave.

    Labels and media objects go through the outbox like readings (kept across
    restarts, resent until acknowledged; media objects on the media topic).
    Each counts in the next privacy receipt only once the outbox has it: a
    receipt never claims a release that did not happen. Returns the sequence
    numbers of the labels and of the media objects.

    Raises:
        EnrollmentError: privacy is not attached, or the agent is not enrolled.
        PolicyDenied: the model's contract declares no such media stream.
        StorageError: a label or media object was refused at capture (see :meth:`Agent.submit`).
    """
    if agent.privacy is None:
        raise EnrollmentError("no privacy pipeline attached; raw media never leaves the device")
    privacy = agent.privacy
    labels, objects = privacy.release_media(stream, media, ts_ms)
    label_seqs = [agent.submit(reading, kept=functools.partial(privacy.record, entry)) for reading, entry in labels]
    media_seqs = [_keep_and_send(agent, obj, functools.partial(privacy.record, entry)) for obj, entry in objects]
    return label_seqs, media_seqs
