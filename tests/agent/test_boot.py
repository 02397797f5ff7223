"""Secure and measured boot on the agent, on both roots of trust."""

from __future__ import annotations

import logging
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.agent.boot import BOOT_CHAIN, MeasuredBoot, manifest_message
from iotguard.agent.images import build_image_set, reference_digests
from iotguard.errors import SecureBootError
from iotguard.keys.rot import extend_pcr
from tests.attestation.conftest import Device, copy_release

ZERO = bytes(32)


def _boot_refused(device: Device, images: Path) -> tuple[SecureBootError, MeasuredBoot]:
    device.power_cycle()
    chain = MeasuredBoot(device.store, device.root, device.anchor)
    with pytest.raises(SecureBootError) as info:
        chain.boot(images)
    return info.value, chain


def test_good_chain_extends_each_stage_into_its_pcr(device: Device) -> None:
    record = device.boot()
    digests = reference_digests(device.firmware.releases["1.0.0"])
    assert [e.stage for e in record.events] == [s.name for s in BOOT_CHAIN]
    assert record.firmware_version == "1.0.0"
    assert record.privacy_config_hash == digests["privacy-configuration"]
    pcrs = device.root.pcr_read(record.pcr_selection)
    for stage in BOOT_CHAIN:
        assert pcrs[stage.pcr] == extend_pcr(ZERO, digests[stage.name])


def test_secure_boot_refuses_a_stage_with_a_bad_signature(device: Device, tmp_path: Path) -> None:
    images = copy_release(device.firmware, "1.0.0", tmp_path / "images")
    signed, signature = cbor2.loads((images / "kernel.manifest").read_bytes())
    broken = bytes([signature[0] ^ 1]) + signature[1:]
    (images / "kernel.manifest").write_bytes(cbor2.dumps([signed, broken]))
    error, chain = _boot_refused(device, images)
    assert error.code == "boot_signature_invalid"
    # Measured boot recorded the refused kernel; nothing after it ran.
    assert [e.stage for e in chain.events] == ["bootloader", "kernel"]
    assert device.root.pcr_read([10])[10] == ZERO


def test_secure_boot_refuses_a_stage_signed_by_another_key(device: Device, tmp_path: Path) -> None:
    images = copy_release(device.firmware, "1.0.0", tmp_path / "images")
    attacker = Ed25519PrivateKey.generate()
    build_image_set(tmp_path / "attacker", attacker.sign, "1.0.0")
    for suffix in ("img", "manifest"):
        (images / f"bootloader.{suffix}").write_bytes((tmp_path / "attacker" / f"bootloader.{suffix}").read_bytes())
    error, chain = _boot_refused(device, images)
    assert error.code == "boot_signature_invalid"
    assert [e.stage for e in chain.events] == ["bootloader"]


def test_secure_boot_refuses_an_image_that_is_not_the_signed_one(device: Device, tmp_path: Path) -> None:
    images = copy_release(device.firmware, "1.0.0", tmp_path / "images")
    (images / "application.img").write_bytes(b"backdoored application")
    error, chain = _boot_refused(device, images)
    assert error.code == "boot_image_mismatch"
    assert chain.events[-1].stage == "application"


def test_secure_boot_refuses_a_manifest_for_another_stage(device: Device, tmp_path: Path) -> None:
    """A validly signed bootloader image and manifest presented as the kernel."""
    images = copy_release(device.firmware, "1.0.0", tmp_path / "images")
    for suffix in ("img", "manifest"):
        (images / f"kernel.{suffix}").write_bytes((images / f"bootloader.{suffix}").read_bytes())
    error, _ = _boot_refused(device, images)
    assert error.code == "boot_stage_mismatch"


def test_secure_boot_refuses_an_altered_boot_anchor(device: Device) -> None:
    device.anchor = bytes([device.anchor[0] ^ 1]) + device.anchor[1:]
    error, chain = _boot_refused(device, device.firmware.releases["1.0.0"])
    assert error.code == "boot_anchor_invalid"
    assert chain.events == []


def test_secure_boot_refuses_a_malformed_manifest_and_a_missing_image(device: Device, tmp_path: Path) -> None:
    images = copy_release(device.firmware, "1.0.0", tmp_path / "images")
    (images / "kernel.manifest").write_bytes(b"\xa1")
    assert _boot_refused(device, images)[0].code == "boot_manifest_malformed"
    (images / "kernel.img").unlink()
    assert _boot_refused(device, images)[0].code == "boot_image_missing"


def test_unsafe_allow_unverified_runs_on_loudly_and_still_measures(
    device: Device, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = copy_release(device.firmware, "1.0.0", tmp_path / "images")
    (images / "kernel.img").write_bytes(b"tampered kernel")
    with caplog.at_level(logging.WARNING):
        record = device.boot(images, unsafe_allow_unverified=True)
    assert "UNSAFE" in caplog.text
    assert [e.stage for e in record.events] == [s.name for s in BOOT_CHAIN]
    assert record.events[1].digest != reference_digests(device.firmware.releases["1.0.0"])["kernel"]


def test_manifest_message_is_deterministic() -> None:
    assert manifest_message("kernel", "1.0.0", ZERO, 5) == cbor2.dumps(
        ["iotguard-boot-manifest/1", "kernel", "1.0.0", ZERO, 5], canonical=True
    )
