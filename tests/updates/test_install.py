"""End-to-end: a release published with python-tuf is installed A/B by ngclient."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from iotguard.agent.firmware import FirmwareUpdateClient, InstallStep, TransportFetcher, anti_rollback_counter
from iotguard.agent.slots import BootedSlot
from iotguard.errors import MalformedError, RollbackError, SecureBootError
from iotguard.keys.software_rot import SoftwareRootOfTrust
from iotguard.updates import FirmwareRepository
from tests.updates.conftest import BASE_URL, MODEL, Fleet, image


def test_published_release_installs_and_commits(fleet: Fleet, tmp_path: Path) -> None:
    release = fleet.publish(MODEL, 2)
    device = fleet.device(tmp_path / "dev")
    outcome = device.install(2)
    assert (outcome.version, outcome.rolled_back) == (2, False)
    booted = device.slots.boot()
    assert not booted.trial and booted.image.version == 2
    assert booted.image.sha256 == release.image_sha256
    assert device.slots.read(booted.slot) == image(MODEL, 2)
    assert fleet.device_keystore.counter(anti_rollback_counter(MODEL)) == 2


def test_release_carries_lifecycle_facts_and_reference_values(fleet: Fleet) -> None:
    release = fleet.publish(MODEL, 2)
    (published,) = fleet.repo.releases(MODEL)
    assert published == release
    assert published.disclosure_contact == "https://example.org/security"
    assert published.measurements == {"app": hashlib.sha256(image(MODEL, 2)).hexdigest()}


def test_failing_self_test_rolls_back_by_itself(fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(MODEL, 2)

    def broken(_slot: BootedSlot, _image: bytes) -> None:
        raise RuntimeError("watchdog: application did not come up")

    device = fleet.device(tmp_path / "dev", self_test=broken)
    outcome = device.install(2)
    assert (outcome.version, outcome.rolled_back) == (1, True)
    booted = device.slots.boot()
    assert (booted.image.version, booted.trial) == (1, False)
    assert fleet.device_keystore.counter(anti_rollback_counter(MODEL)) <= 1


class PowerLoss(Exception):
    pass


@pytest.mark.parametrize("step", list(InstallStep))
def test_power_loss_at_every_install_step_boots_a_good_slot(fleet: Fleet, tmp_path: Path, step: InstallStep) -> None:
    fleet.publish(MODEL, 2)
    good = {hashlib.sha256(image(MODEL, v)).hexdigest(): v for v in (1, 2)}

    def cut_power(reached: InstallStep) -> None:
        if reached is step:
            raise PowerLoss(reached)

    device = fleet.device(tmp_path / "dev", on_step=cut_power)
    with pytest.raises(PowerLoss):
        device.install(2)
    # A new process after the reset: the bootloader picks a slot, the agent resumes.
    restarted = fleet.client(tmp_path / "dev")
    booted = restarted.slots.boot()
    assert hashlib.sha256(restarted.slots.read(booted.slot)).hexdigest() in good
    outcome = restarted.resume(booted)
    final = restarted.slots.boot()
    assert not final.trial
    assert good[hashlib.sha256(restarted.slots.read(final.slot)).hexdigest()] == final.image.version == outcome.version
    assert fleet.device_keystore.counter(anti_rollback_counter(MODEL)) == outcome.version
    if step in (InstallStep.SELF_TEST, InstallStep.COMMIT):
        assert outcome.version == 2


def test_trial_that_never_reaches_self_test_rolls_back_after_its_boot_budget(fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(MODEL, 2)
    device = fleet.device(tmp_path / "dev")
    release, data = device.fetch_release(2)
    device.slots.write_inactive(data, 2, release.image_sha256, release.image_length)
    device.slots.switch()
    trial_boots = [device.slots.boot().trial for _ in range(4)]  # the new image hangs before its self-test
    assert trial_boots == [True, True, True, False]
    assert device.slots.boot().image.version == 1


def test_corrupted_trial_slot_is_never_booted(fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(MODEL, 2)
    device = fleet.device(tmp_path / "dev")
    release, data = device.fetch_release(2)
    slot = device.slots.write_inactive(data, 2, release.image_sha256, release.image_length)
    device.slots.switch()
    (tmp_path / "dev" / "firmware" / f"slot-{slot}.img").write_bytes(b"\0" * release.image_length)
    booted = device.slots.boot()
    assert (booted.image.version, booted.trial) == (1, False)


def test_corrupted_committed_slot_refuses_to_boot(fleet: Fleet, tmp_path: Path) -> None:
    device = fleet.device(tmp_path / "dev")
    (tmp_path / "dev" / "firmware" / "slot-a.img").write_bytes(b"evil")
    with pytest.raises(SecureBootError):
        device.slots.boot()


def test_repository_rebuilt_from_its_files_keeps_publishing(fleet: Fleet, tmp_path: Path) -> None:
    fleet.publish(MODEL, 2)
    device = fleet.device(tmp_path / "dev")
    assert device.install(2).version == 2
    fleet.repo = FirmwareRepository.from_files(fleet.repo.files())  # e.g. after a hub restart
    assert [r.version for r in fleet.repo.releases(MODEL)] == [2]
    fleet.publish(MODEL, 3)
    assert device.install(3).version == 3


def test_repository_files_without_root_are_malformed() -> None:
    with pytest.raises(MalformedError):
        FirmwareRepository.from_files({"metadata/timestamp.json": b"{}"})


def test_anti_rollback_counter_in_a_root_of_trust(fleet: Fleet, tmp_path: Path) -> None:
    """The counter may live in the device's root of trust (TPM NV counters on the TPM backend)."""
    fleet.publish(MODEL, 2)
    fleet.publish(MODEL, 3)
    rot = SoftwareRootOfTrust(fleet.device_keystore)
    FirmwareUpdateClient.trust(tmp_path / "dev", fleet.repo.files()["metadata/1.root.json"])
    client = FirmwareUpdateClient(tmp_path / "dev", model=MODEL, counters=rot, base_url=BASE_URL,
                                  fetcher=TransportFetcher(fleet.transport), self_test=lambda _s, _i: None)
    client.slots.provision(image(MODEL, 1), 1)
    assert client.install(3).version == 3
    assert rot.counter(anti_rollback_counter(MODEL)) == 3
    with pytest.raises(RollbackError):
        client.install(2)
