"""The hub asks a stage's devices to run an update round now (``update-check`` on their ``cmd`` topic).

When a rollout starts, advances or resumes, the devices of the stage's
cohort that have not reported yet are told through the outbox (so the
command survives a crash between the campaign's move and the send). Each
command is authenticated with the device's downlink session key; the agent
brings its next scheduled round forward to a random point of the next
half-minute (``agent/update_schedule.py``), so a cohort does not stampede.
A lost command costs nothing: the device's own schedule still runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import cbor2

from iotguard.channel.session import command_topic, encode_command
from iotguard.errors import IotGuardError
from iotguard.hub.outbox import OutboxMessage, OutboxRow, OutboxStore
from iotguard.hub.services.consent import CommandChannel
from iotguard.hub.services.lifecycle import DeviceLifecycle

__all__ = ["UPDATE_CHECK_COMMAND", "UPDATE_CHECK_KIND", "UpdateCheckPush", "queue_update_checks"]

log = logging.getLogger(__name__)

#: Outbox kind of a queued command.
UPDATE_CHECK_KIND = "rollout.update_check"
#: The command's kind on the device's ``cmd`` topic (the agent's ``UPDATE_COMMAND``).
UPDATE_CHECK_COMMAND = "update-check"


def queue_update_checks(outbox: OutboxStore, device_ids: Sequence[str], now: datetime) -> None:
    """Queue an ``update-check`` command for each device."""
    outbox.enqueue([OutboxMessage(UPDATE_CHECK_KIND, cbor2.dumps({"device_id": d})) for d in device_ids], now)


class UpdateCheckPush:
    """Outbox handler sending queued ``update-check`` commands; claims rows only while connected to the broker.

    Args:
        lifecycle: Session keys of each device (the command's MAC key).
        channel: The command path to devices.
    """

    def __init__(self, lifecycle: DeviceLifecycle, channel: CommandChannel) -> None:
        self.lifecycle = lifecycle
        self.channel = channel

    @property
    def kinds(self) -> tuple[str, ...]:
        return (UPDATE_CHECK_KIND,) if self.channel.connected else ()

    def deliver(self, rows: Sequence[OutboxRow], confirm: Callable[[Any], bool]) -> None:
        for r in rows:
            try:
                device_id = str(cbor2.loads(r.payload)["device_id"])
                record = self.lifecycle.store.get_device(device_id)
                if record.current_epoch is None:
                    continue
                _r, _s, keys = self.lifecycle.session(device_id, record.current_epoch)
            except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, IotGuardError) as exc:
                log.warning("update-check command dropped: %s", type(exc).__name__)
                continue
            self.channel.publish(command_topic(record.segment, device_id),
                                 encode_command(device_id, UPDATE_CHECK_COMMAND, b"", keys.downlink))
        confirm(None)
