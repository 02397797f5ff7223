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

from collections.abc import Sequence
from datetime import datetime

import cbor2

from iotguard.hub.outbox import OutboxMessage, OutboxStore
from iotguard.hub.services.consent import CommandChannel
from iotguard.hub.services.device_commands import DeviceCommandPush
from iotguard.hub.services.lifecycle import DeviceLifecycle

__all__ = ["UPDATE_CHECK_COMMAND", "UPDATE_CHECK_KIND", "UpdateCheckPush", "queue_update_checks"]

#: Outbox kind of a queued command.
UPDATE_CHECK_KIND = "rollout.update_check"
#: The command's kind on the device's ``cmd`` topic (the agent's ``UPDATE_COMMAND``).
UPDATE_CHECK_COMMAND = "update-check"


def queue_update_checks(outbox: OutboxStore, device_ids: Sequence[str], now: datetime) -> None:
    """Queue an ``update-check`` command for each device."""
    outbox.enqueue([OutboxMessage(UPDATE_CHECK_KIND, cbor2.dumps({"device_id": d})) for d in device_ids], now)


class UpdateCheckPush(DeviceCommandPush):
    """Outbox handler sending queued ``update-check`` commands; claims rows only while connected to the broker."""

    def __init__(self, lifecycle: DeviceLifecycle, channel: CommandChannel) -> None:
        super().__init__(lifecycle, channel, kind=UPDATE_CHECK_KIND, command=UPDATE_CHECK_COMMAND)
