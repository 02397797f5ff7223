"""The shipped default playbook acts on every detector, inside its guard rails."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from iotguard.detection import (
    ActionKind,
    ActionStatus,
    Alert,
    DeviceView,
    FleetView,
    ResponseState,
    Severity,
    default_playbook,
    plan,
)
from iotguard.detection.playbook import DETECTORS

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

#: The severity each detector raises its alerts with (autoencoder: high for a strong anomaly).
EMITTED = {
    "autoencoder": Severity.HIGH, "scan_fanout": Severity.HIGH, "new_port": Severity.LOW,
    "beaconing": Severity.HIGH, "known_bad_address": Severity.CRITICAL, "credential_guessing": Severity.HIGH,
    "cloned_device": Severity.CRITICAL, "process_change": Severity.HIGH, "new_listening_port": Severity.HIGH,
    "new_destination": Severity.MEDIUM, "health_anomaly": Severity.MEDIUM, "auth_failures": Severity.HIGH,
    "policy_denials": Severity.MEDIUM, "attestation_failed": Severity.CRITICAL,
    "attestation_degraded": Severity.MEDIUM, "inbound_probing": Severity.LOW,
}


def _fleet(n: int = 20) -> FleetView:
    return FleetView({f"d{i}": DeviceView(f"d{i}", "seg-0", "thermo", False) for i in range(n)})


def _alert(device: str, detector: str) -> Alert:
    return Alert.create(device, detector, 5.0, EMITTED[detector], (1e9, 1e9 + 60), {"address": "10.0.0.1"})


def _kinds(detector: str) -> dict[ActionKind, ActionStatus]:
    return {a.kind: a.status for a in plan([_alert("d1", detector)], default_playbook(), _fleet(), ResponseState(),
                                           NOW)}


def test_every_detector_is_covered() -> None:
    assert set(EMITTED) == set(DETECTORS)


@pytest.mark.parametrize("detector", sorted(EMITTED))
def test_default_playbook_acts_on_every_detector(detector: str) -> None:
    kinds = _kinds(detector)
    assert kinds, f"no rule of the default playbook acts on {detector}"
    assert all(status is not ActionStatus.EXECUTE for kind, status in kinds.items()
               if kind in (ActionKind.REVOKE, ActionKind.ROLLBACK))  # destructive actions wait for an operator


def test_health_and_signal_detectors_get_their_response() -> None:
    assert _kinds("process_change") == {ActionKind.QUARANTINE: ActionStatus.EXECUTE,
                                        ActionKind.REATTEST: ActionStatus.EXECUTE}
    assert _kinds("attestation_failed") == {ActionKind.QUARANTINE: ActionStatus.EXECUTE,
                                            ActionKind.REVOKE: ActionStatus.AWAIT_APPROVAL}
    # Probing the policy or drifting gets verified, not contained.
    for detector in ("policy_denials", "health_anomaly", "new_destination", "attestation_degraded", "auth_failures",
                     "inbound_probing"):
        assert _kinds(detector) == {ActionKind.REATTEST: ActionStatus.EXECUTE}, detector


def test_fleet_wide_process_change_quarantines_no_more_than_the_blast_radius() -> None:
    """All 20 devices of a segment report new software at once (a firmware update): 10 % = 2 are contained."""
    alerts = [_alert(f"d{i}", "process_change") for i in range(20)]
    actions = plan(alerts, default_playbook(), _fleet(20), ResponseState(), NOW)
    quarantined = [a for a in actions if a.kind is ActionKind.QUARANTINE and a.status is ActionStatus.EXECUTE]
    held = [a for a in actions if a.kind is ActionKind.QUARANTINE and a.status is not ActionStatus.EXECUTE]
    assert len(quarantined) == 2 and len(held) == 18


def test_fuzz_seed_is_the_shipped_playbook_revision() -> None:
    """The fuzzer's playbook seed starts from the playbook we ship, not from an older revision of it."""
    from importlib import resources
    from pathlib import Path

    seed = Path(__file__).parents[1] / "fuzz" / "corpus" / "playbook" / "default"
    shipped = resources.files("iotguard.detection").joinpath("default_playbook.toml").read_bytes()
    assert seed.read_bytes() == shipped
