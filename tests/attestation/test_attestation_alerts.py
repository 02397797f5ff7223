"""Attestation results as detection input: a contraindicated appraisal is a critical alert on the device."""

from __future__ import annotations

from pathlib import Path

from iotguard.detection import AppraisalRule
from tests.attestation.conftest import Device, Firmware
from tests.attestation.test_hub_attestation import _attest_boot, _tampered
from tests.hub.conftest import HubParts


def test_appraisal_rule_alerts_on_contraindicated_and_warning_once_per_quiet_period() -> None:
    rule = AppraisalRule()
    [failed] = rule.observe("dev-1", "contraindicated", ["kernel_mismatch"], 1000.0)
    assert (failed.detector, failed.severity.name) == ("attestation_failed", "CRITICAL")
    assert rule.observe("dev-1", "contraindicated", ["kernel_mismatch"], 1010.0) == []  # re-attesting in a loop
    assert [a.detector for a in rule.observe("dev-2", "warning", ["stale"], 1010.0)] == ["attestation_degraded"]
    assert rule.observe("dev-3", "affirming", [], 1010.0) == []


def test_tampered_boot_stage_appraised_contraindicated_raises_a_critical_alert(
        hub: HubParts, device: Device, firmware: Firmware, tmp_path: Path) -> None:
    a = hub.agent("dev-1")
    r = _attest_boot(hub, a, device, _tampered(firmware, tmp_path, "kernel"), unsafe=True)
    assert r.json()["status"] == "contraindicated"
    [alert] = hub.services.detection.alerts(device_id="dev-1")
    assert (alert.alert.detector, alert.alert.severity.name) == ("attestation_failed", "CRITICAL")
    assert hub.services.posture.posture.require("dev-1").risk_score == 80


def test_affirming_appraisal_raises_no_alert(hub: HubParts, device: Device) -> None:
    a = hub.agent("dev-1")
    assert _attest_boot(hub, a, device).json()["status"] == "affirming"
    assert hub.services.detection.alerts(device_id="dev-1") == []

