"""Agents run firmware update rounds on a jittered schedule, and soon after the hub's ``update-check`` command."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from iotguard.agent import Agent
from iotguard.agent.firmware import FirmwareUpdateClient
from iotguard.agent.slots import FirmwareSlots
from iotguard.agent.update_channel import UpdateRound
from iotguard.agent.update_schedule import UPDATE_COMMAND, ScheduledUpdates, UpdateSchedule, agent_updates
from iotguard.channel import encode_command
from iotguard.errors import ConfigError, UpdateRefused
from tests.updates.conftest import image
from tests.updates.hubside import HUB_MODEL, HubFirmware, firmware_hub


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[HubFirmware]:
    yield from firmware_hub(tmp_path)


def test_rounds_are_jittered_around_the_interval() -> None:
    rng = random.Random(7)
    firsts = [UpdateSchedule(100.0, 1000.0, rng=rng).next_due for _ in range(50)]
    assert all(1000.0 <= t < 1100.0 for t in firsts)
    assert len({round(t) for t in firsts}) > 25  # a fleet restarted at once does not check in at once
    schedule = UpdateSchedule(100.0, 0.0, jitter=0.2, rng=rng)
    gaps = []
    for _ in range(50):
        schedule.ran(5000.0)
        gaps.append(schedule.next_due - 5000.0)
    assert all(80.0 <= g <= 120.0 for g in gaps) and max(gaps) - min(gaps) > 10


def test_hub_command_brings_the_next_round_forward_never_back() -> None:
    schedule = UpdateSchedule(3600.0, 0.0, command_spread_s=30.0, rng=random.Random(1))
    schedule.ran(0.0)
    schedule.requested(100.0)
    assert 100.0 <= schedule.next_due <= 130.0
    schedule.next_due = 105.0
    schedule.requested(100.0 - 0.0)
    assert schedule.next_due <= 105.0


def test_schedule_refuses_bad_bounds() -> None:
    with pytest.raises(ConfigError):
        UpdateSchedule(0.0, 0.0)
    with pytest.raises(ConfigError):
        UpdateSchedule(10.0, 0.0, jitter=1.0)


def test_a_failed_round_is_retried_at_the_next_scheduled_time() -> None:
    clock = [0.0]
    calls = []

    def round_() -> UpdateRound:
        calls.append(clock[0])
        if len(calls) == 1:
            raise httpx.ConnectError("hub unreachable")
        raise UpdateRefused("hub refused the update check-in: HTTP 403")

    updates = ScheduledUpdates(round_, UpdateSchedule(60.0, 0.0, rng=random.Random(3)), monotonic=lambda: clock[0])
    clock[0] = 60.0
    assert updates.run_if_due() is None and updates.failures == 1
    assert updates.run_if_due() is None and len(calls) == 1  # not due again yet
    clock[0] = updates.schedule.next_due
    assert updates.run_if_due() is None and updates.failures == 2


def _updatable(repo: HubFirmware, device_id: str, schedule: UpdateSchedule, *,
               default_self_test: bool = False) -> tuple[Agent, ScheduledUpdates]:
    agent = repo.hub.agent(device_id, model=HUB_MODEL)
    FirmwareUpdateClient.trust(agent.dir, repo.root)  # at manufacture: the initial root and factory firmware
    FirmwareSlots(agent.dir).provision(image(HUB_MODEL, 1), 1)
    updates = agent_updates(agent, HUB_MODEL, schedule=schedule,
                            self_test=None if default_self_test else repo.self_test)
    assert updates is not None
    return agent, updates


def test_agent_installs_on_its_schedule(repo: HubFirmware) -> None:
    schedule = UpdateSchedule(3600.0, time.monotonic(), rng=random.Random(5))
    _agent, updates = _updatable(repo, "dev-1", schedule)
    repo.publish(2)
    repo.hub.services.rollouts.start(HUB_MODEL, 2, actor="test", stages=(100.0,))
    assert updates.run_if_due() is None  # not due yet: nothing is fetched
    schedule.next_due = time.monotonic()
    result = updates.run_if_due()
    assert result is not None and (result.offered, result.outcome, result.version) == (2, "committed", 2)
    assert schedule.next_due > time.monotonic() + 3600 * 0.79


def test_agent_runs_a_round_after_the_hubs_update_command(repo: HubFirmware) -> None:
    schedule = UpdateSchedule(86400.0, time.monotonic(), command_spread_s=0.0, rng=random.Random(5))
    agent, updates = _updatable(repo, "dev-1", schedule, default_self_test=True)  # the new firmware re-reads TUF
    schedule.ran(time.monotonic())  # the next scheduled round is a day away
    repo.publish(2)
    repo.hub.services.rollouts.start(HUB_MODEL, 2, actor="test", stages=(100.0,))
    assert updates.run_if_due() is None
    record = repo.hub.store.get_device("dev-1")
    assert record.current_epoch is not None
    _r, _s, keys = repo.hub.services.lifecycle.session("dev-1", record.current_epoch)
    agent._on_command(encode_command("dev-1", UPDATE_COMMAND, b"", keys.downlink))
    result = updates.run_if_due()
    assert result is not None and (result.outcome, result.version) == ("committed", 2)


def test_a_forged_update_command_is_ignored(repo: HubFirmware) -> None:
    schedule = UpdateSchedule(86400.0, time.monotonic(), command_spread_s=0.0, rng=random.Random(5))
    agent, updates = _updatable(repo, "dev-1", schedule)
    schedule.ran(time.monotonic())
    agent._on_command(encode_command("dev-1", UPDATE_COMMAND, b"", b"\x00" * 32))
    assert updates.run_if_due() is None


def test_device_without_a_trusted_root_is_not_updatable(repo: HubFirmware) -> None:
    agent = repo.hub.agent("dev-1", model=HUB_MODEL)
    assert agent_updates(agent, HUB_MODEL) is None
