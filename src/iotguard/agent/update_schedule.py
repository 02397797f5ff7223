"""When an agent runs its firmware update rounds: on a jittered schedule, and soon after the hub asks.

A fleet that checks in at the same instant (after a power cut, a broker
restart, a rollout's command to a whole cohort) is a thundering herd at the
hub. So the first round falls at a random point of the first interval, each
later one ``interval_s`` away give or take ``jitter`` of it, and a hub
command (``update-check`` on the device's authenticated ``cmd`` topic) moves
the next round to a random point of the next ``command_spread_s`` seconds.

:class:`ScheduledUpdates` runs :func:`~iotguard.agent.update_channel.update_round`
when it is due, from the agent's own loop; a failed round (hub unreachable,
check-in refused) is logged and retried at the next scheduled time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from iotguard.agent.firmware import FirmwareUpdateClient
from iotguard.agent.slots import BootedSlot
from iotguard.agent.update_channel import REPOSITORY_URL, UpdateRound, device_update_channel, update_round
from iotguard.errors import ConfigError, IotGuardError

if TYPE_CHECKING:  # the runtime imports this module; only its type is needed here
    from iotguard.agent.runtime import Agent

__all__ = ["UPDATE_COMMAND", "ScheduledUpdates", "UpdateSchedule", "agent_updates"]

log = logging.getLogger(__name__)

#: Kind of the hub's command asking a device to run an update round now.
UPDATE_COMMAND = "update-check"


class UpdateSchedule:
    """The due time of a device's next update round (monotonic seconds).

    Args:
        interval_s: Mean seconds between rounds.
        now: The current monotonic time.
        jitter: Each interval is ``interval_s * (1 +- jitter)``, uniformly (0 <= jitter < 1).
        command_spread_s: A hub command brings the next round to within this many seconds.
        rng: Randomness (tests pass a seeded one).

    Raises:
        ConfigError: a non-positive interval, or a jitter outside [0, 1).
    """

    def __init__(self, interval_s: float, now: float, *, jitter: float = 0.2, command_spread_s: float = 30.0,
                 rng: random.Random | None = None) -> None:
        if not interval_s > 0:
            raise ConfigError("update interval must be positive")
        if not 0 <= jitter < 1:
            raise ConfigError("update jitter must lie in [0, 1)")
        self.interval_s = interval_s
        self.jitter = jitter
        self.command_spread_s = max(0.0, command_spread_s)
        self._rng = rng or random.SystemRandom()
        self._lock = threading.Lock()
        self.next_due = now + self._rng.uniform(0, interval_s)

    def due(self, now: float) -> bool:
        """Whether a round is due at ``now``."""
        return now >= self.next_due

    def ran(self, now: float) -> None:
        """A round ran (or failed) at ``now``: the next is one jittered interval later."""
        spread = self.interval_s * self.jitter
        with self._lock:
            self.next_due = now + self.interval_s + self._rng.uniform(-spread, spread)

    def requested(self, now: float) -> None:
        """The hub asked for a round: it falls within ``command_spread_s`` (never later than already due)."""
        with self._lock:
            self.next_due = min(self.next_due, now + self._rng.uniform(0, self.command_spread_s))


class ScheduledUpdates:
    """Runs an agent's update rounds when its schedule says so.

    Args:
        run_round: One check-in, install and report round.
        schedule: When rounds are due.
        monotonic: Clock of the schedule.
    """

    def __init__(self, run_round: Callable[[], UpdateRound], schedule: UpdateSchedule, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._run_round = run_round
        self.schedule = schedule
        self._monotonic = monotonic
        self.last: UpdateRound | None = None
        self.failures = 0

    def on_command(self) -> None:
        """The hub's ``update-check`` command arrived (called from the MQTT thread)."""
        self.schedule.requested(self._monotonic())

    def run_if_due(self) -> UpdateRound | None:
        """Run a round if one is due; returns it (``None``: not due, or it failed and was logged)."""
        now = self._monotonic()
        if not self.schedule.due(now):
            return None
        try:
            result = self._run_round()
        except (IotGuardError, httpx.HTTPError) as exc:
            self.failures += 1
            log.warning("firmware update round failed: %s", getattr(exc, "code", type(exc).__name__))
            self.schedule.ran(self._monotonic())
            return None
        self.last = result
        if result.outcome != "none":
            log.info("firmware update round: offered %d, running %d, %s %s", result.offered, result.version,
                     result.outcome, result.reason)
        self.schedule.ran(self._monotonic())
        return result


def agent_updates(agent: Agent, model: str, *, schedule: UpdateSchedule | None = None,
                  self_test: Callable[[BootedSlot, bytes], None] | None = None) -> ScheduledUpdates | None:
    """Scheduled update rounds of an enrolled agent, answering the hub's ``update-check`` command.

    Updates need what the device got at manufacture: the fleet's initial TUF
    root (``<data_dir>/firmware/metadata/root.json``) and provisioned A/B
    slots; without them this returns ``None`` (the device is not updatable).
    An install interrupted by a reset is finished first (self-test, commit or
    roll back). The default self-test asks the new firmware to reach and
    verify the update repository again over its mutual-TLS channel: a build
    that cannot is rolled back before it is committed.

    Args:
        agent: The enrolled agent (its hub channel, key store and command topic).
        model: The device's model.
        schedule: When rounds are due (default: every ``agent.update_interval_s``, jittered).
        self_test: Replaces the default self-test.
    """
    data_dir = agent.dir
    if not (data_dir / "firmware" / "metadata" / "root.json").exists():
        log.info("%s: no trusted firmware root: firmware updates are off", agent.device_id)
        return None
    fetcher, check_in = device_update_channel(agent)
    clients: list[FirmwareUpdateClient] = []  # the self-test needs the client it belongs to

    def reaches_repository(_slot: BootedSlot, _image: bytes) -> None:
        clients[0].refresh()

    client = FirmwareUpdateClient(data_dir, model=model, counters=agent.keystore, fetcher=fetcher,
                                  base_url=REPOSITORY_URL, self_test=self_test or reaches_repository)
    clients.append(client)
    if not client.slots.provisioned():
        log.info("%s: firmware slots not provisioned: firmware updates are off", agent.device_id)
        return None
    client.resume(client.slots.boot())
    updates = ScheduledUpdates(lambda: update_round(client, check_in),
                               schedule or UpdateSchedule(agent.cfg.update_interval_s, time.monotonic()))
    agent.on_update_command = updates.on_command
    return updates
