"""One outbox handler for authenticated commands to devices on their ``cmd`` topic.

A service queues ``{"device_id": ..., "argument": bytes}`` rows of its own
outbox kind (so the command survives a crash between the decision and the
send); the handler claims them only while the hub is connected to the broker,
authenticates each command with the device's downlink session key and
publishes it. A row it cannot use (unknown device, no session, bad payload)
is dropped with a warning: a lost command costs nothing but a retry by its
service or the device's own schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import cbor2

from iotguard.channel.session import command_topic, encode_command
from iotguard.errors import IotGuardError
from iotguard.hub.outbox import OutboxRow
from iotguard.hub.services.consent import CommandChannel
from iotguard.hub.services.lifecycle import DeviceLifecycle

__all__ = ["DeviceCommandPush"]

log = logging.getLogger(__name__)


class DeviceCommandPush:
    """Outbox handler sending queued rows of ``kind`` as the device command ``command``.

    Args:
        lifecycle: Session keys of each device (the command's MAC key).
        channel: The command path to devices.
        kind: The outbox kind this handler claims.
        command: The command's kind on the device's ``cmd`` topic.
        argument: The payload field carried as the command's argument (bytes), or None for none.
    """

    def __init__(self, lifecycle: DeviceLifecycle, channel: CommandChannel, *, kind: str, command: str,
                 argument: str | None = None) -> None:
        self.lifecycle = lifecycle
        self.channel = channel
        self.kind = kind
        self.command = command
        self.argument = argument

    @property
    def kinds(self) -> tuple[str, ...]:
        return (self.kind,) if self.channel.connected else ()

    def deliver(self, rows: Sequence[OutboxRow], confirm: Callable[[Any], bool]) -> None:
        for r in rows:
            try:
                row = cbor2.loads(r.payload)
                device_id = str(row["device_id"])
                argument = bytes(row[self.argument]) if self.argument is not None else b""
                record = self.lifecycle.store.get_device(device_id)
                if record.current_epoch is None:
                    continue
                _r, _s, keys = self.lifecycle.session(device_id, record.current_epoch)
            except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, IotGuardError) as exc:
                log.warning("%s command dropped: %s", self.command, type(exc).__name__)
                continue
            self.channel.publish(command_topic(record.segment, device_id),
                                 encode_command(device_id, self.command, argument, keys.downlink))
        confirm(None)
