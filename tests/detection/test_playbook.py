"""Playbook files (strict validation) and the response planner's guard rails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iotguard.detection import (
    ActionKind,
    ActionStatus,
    Alert,
    DeviceView,
    FleetView,
    ResponseState,
    Severity,
    approve,
    default_playbook,
    parse_playbook,
    plan,
)
from iotguard.errors import ConfigError

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

PLAYBOOK = b"""
format = "iotguard-playbook/1"
name = "test"
revision = 7

[guard_rails]
blast_radius_percent = 10
blast_radius_min_devices = 1
cooldown_s = 600

[notify]
webhook = "https://soc.example.org/hook"

[[rules]]
name = "contain"
detectors = ["scan_fanout", "autoencoder"]
min_severity = "high"
actions = ["quarantine", "reattest", "revoke", "notify"]
"""


def _fleet(n: int = 20, segments: int = 1, quarantined: tuple[str, ...] = ()) -> FleetView:
    return FleetView({f"d{i}": DeviceView(f"d{i}", f"seg-{i % segments}", "thermo", f"d{i}" in quarantined)
                      for i in range(n)})


def _alert(device: str, score: float = 10.0, detector: str = "scan_fanout",
           severity: Severity = Severity.HIGH) -> Alert:
    return Alert.create(device, detector, score, severity, (1e9, 1e9 + 60), {"address": "10.0.0.1"})


def _status(actions, kind) -> dict[str, tuple[ActionStatus, str]]:
    return {a.device: (a.status, a.reason) for a in actions if a.kind is kind}


def test_default_playbook_is_valid() -> None:
    pb = default_playbook()
    assert pb.revision >= 1 and pb.rules and not pb.unsafe
    assert ActionKind.REVOKE in pb.guard_rails.approval


def test_plan_quarantines_and_links_alert() -> None:
    pb = parse_playbook(PLAYBOOK)
    alert = _alert("d3")
    actions = plan([alert], pb, _fleet(), ResponseState(), NOW)
    assert {(a.kind, a.status) for a in actions} == {
        (ActionKind.QUARANTINE, ActionStatus.EXECUTE), (ActionKind.REATTEST, ActionStatus.EXECUTE),
        (ActionKind.REVOKE, ActionStatus.AWAIT_APPROVAL), (ActionKind.NOTIFY, ActionStatus.EXECUTE)}
    assert all(a.alert_id == alert.alert_id and a.playbook == "test@7" and a.rule == "contain" for a in actions)


def test_low_severity_alert_matches_nothing() -> None:
    assert plan([_alert("d1", severity=Severity.MEDIUM)], parse_playbook(PLAYBOOK), _fleet(), ResponseState(),
                NOW) == []


def test_blast_radius_holds_back_mass_quarantine() -> None:
    """Attack on the responder: alerts on a whole segment must not take the segment offline."""
    pb = parse_playbook(PLAYBOOK)
    alerts = [_alert(f"d{i}", score=float(i)) for i in range(20)]
    actions = plan(alerts, pb, _fleet(20), ResponseState(), NOW)
    q = _status(actions, ActionKind.QUARANTINE)
    executed = [d for d, (s, _) in q.items() if s is ActionStatus.EXECUTE]
    assert len(executed) == 2  # 10 % of 20
    assert set(executed) == {"d19", "d18"}  # the most anomalous first
    assert all(r == (ActionStatus.AWAIT_APPROVAL, "blast_radius") for d, r in q.items() if d not in executed)


def test_blast_radius_counts_devices_already_quarantined() -> None:
    pb = parse_playbook(PLAYBOOK)
    actions = plan([_alert("d5"), _alert("d6")], pb, _fleet(20, quarantined=("d1", "d2")), ResponseState(), NOW)
    assert {s for s, _ in _status(actions, ActionKind.QUARANTINE).values()} == {ActionStatus.AWAIT_APPROVAL}


def test_blast_radius_is_per_segment() -> None:
    pb = parse_playbook(PLAYBOOK)
    alerts = [_alert(f"d{i}") for i in range(20)]
    actions = plan(alerts, pb, _fleet(20, segments=2), ResponseState(), NOW)
    executed = [d for d, (s, _) in _status(actions, ActionKind.QUARANTINE).items() if s is ActionStatus.EXECUTE]
    assert sorted(int(d[1:]) % 2 for d in executed) == [0, 1]  # one in each segment of 10


def test_cooldown_suppresses_repeats() -> None:
    pb = parse_playbook(PLAYBOOK)
    first = plan([_alert("d1")], pb, _fleet(), ResponseState(), NOW)
    state = ResponseState().after(first, NOW)
    again = plan([_alert("d1", score=11.0)], pb, _fleet(quarantined=("d1",)), state, NOW + timedelta(minutes=5))
    assert _status(again, ActionKind.REATTEST)["d1"] == (ActionStatus.SUPPRESSED, "cooldown")
    assert _status(again, ActionKind.QUARANTINE)["d1"] == (ActionStatus.SUPPRESSED, "already_quarantined")
    later = plan([_alert("d1", score=11.0)], pb, _fleet(), state, NOW + timedelta(minutes=11))
    assert _status(later, ActionKind.REATTEST)["d1"][0] is ActionStatus.EXECUTE


def test_destructive_actions_wait_for_approval() -> None:
    pb = parse_playbook(PLAYBOOK)
    revoke = next(a for a in plan([_alert("d1")], pb, _fleet(), ResponseState(), NOW)
                  if a.kind is ActionKind.REVOKE)
    assert revoke.status is ActionStatus.AWAIT_APPROVAL
    assert approve(revoke).status is ActionStatus.EXECUTE


def test_unknown_address_gets_no_device_action() -> None:
    pb = parse_playbook(PLAYBOOK)
    actions = plan([_alert("198.51.100.9")], pb, _fleet(), ResponseState(), NOW)
    assert {a.kind: a.status for a in actions}[ActionKind.QUARANTINE] is ActionStatus.SUPPRESSED
    assert {a.kind: a.status for a in actions}[ActionKind.NOTIFY] is ActionStatus.EXECUTE


def test_auto_release_after_clean_attestation() -> None:
    pb = parse_playbook(PLAYBOOK)
    state = ResponseState().after(plan([_alert("d1")], pb, _fleet(), ResponseState(), NOW), NOW)
    still = FleetView({"d1": DeviceView("d1", "seg-0", "thermo", True, attested_clean_at=NOW - timedelta(hours=1))})
    assert plan([], pb, still, state, NOW + timedelta(minutes=1)) == []  # attested before the quarantine
    clean = FleetView({"d1": DeviceView("d1", "seg-0", "thermo", True, attested_clean_at=NOW + timedelta(minutes=2))})
    release = plan([], pb, clean, state, NOW + timedelta(minutes=3))
    assert [(a.kind, a.status, a.reason) for a in release] == [
        (ActionKind.RELEASE, ActionStatus.EXECUTE, "clean_attestation")]
    assert "d1" not in state.after(release, NOW).quarantined_at
    # a device with a fresh alert stays in
    assert not [a for a in plan([_alert("d1")], pb, clean, state, NOW) if a.kind is ActionKind.RELEASE]


@pytest.mark.parametrize(("text", "fragment"), [
    (b'format = "iotguard-playbook/2"', "format"),
    (PLAYBOOK.replace(b"revision = 7", b"revision = 0"), "revision"),
    (PLAYBOOK.replace(b'"notify"]', b'"reboot"]'), "unknown action"),
    (PLAYBOOK.replace(b'"scan_fanout"', b'"scan"'), "unknown detector"),
    (PLAYBOOK.replace(b"cooldown_s = 600", b"cooldown_s = -1"), "cooldown"),
    (PLAYBOOK.replace(b"blast_radius_percent = 10", b"blast_radius_percent = 150"), "blast_radius"),
    (PLAYBOOK.replace(b"blast_radius_percent = 10", b"blast_radius_percent = true"), "wrong type"),
    (PLAYBOOK.replace(b"cooldown_s = 600", b"cooldown_s = 600\napproval = []"), "unsafe_auto_destructive"),
    (PLAYBOOK.replace(b"https://", b"http://"), "https"),
    (PLAYBOOK.replace(b'[notify]\nwebhook = "https://soc.example.org/hook"', b""), "no webhook"),
    (PLAYBOOK.replace(b'name = "contain"', b'name = "contain"\nwhen = "always"'), "unknown key"),
    (PLAYBOOK.replace(b'min_severity = "high"', b'min_severity = "severe"'), "min_severity"),
    (PLAYBOOK + PLAYBOOK[PLAYBOOK.index(b"[[rules]]"):], "unique"),
    (b"rules = []\n" + PLAYBOOK[:PLAYBOOK.index(b"[[rules]]")], "empty playbook"),
    (b"not = toml = at all", "TOML"),
    (PLAYBOOK.replace(b'"notify"]', b'"release"]'), "release is automatic"),
])
def test_invalid_playbooks_are_rejected_with_a_clear_error(text: bytes, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_playbook(text)
    assert err.value.code == "playbook_invalid"
    assert fragment in str(err.value)


def test_unsafe_auto_destructive_is_reported() -> None:
    pb = parse_playbook(PLAYBOOK.replace(b"cooldown_s = 600", b"cooldown_s = 600\napproval = []\n"
                                                                b"unsafe_auto_destructive = true"))
    assert pb.unsafe == ["unsafe_auto_destructive"]
    revoke = next(a for a in plan([_alert("d1")], pb, _fleet(), ResponseState(), NOW) if a.kind is ActionKind.REVOKE)
    assert revoke.status is ActionStatus.EXECUTE


def test_a_scanner_that_attests_clean_between_its_alerts_is_not_released() -> None:
    """Malware in memory survives a clean boot chain: a clean attestation alone does not end a quarantine
    while the device still alerts; it does once no alert was raised on it for ``release_quiet_s``."""
    pb = parse_playbook(PLAYBOOK.replace(b"cooldown_s = 600", b"cooldown_s = 600\nrelease_quiet_s = 1800"))
    assert pb.guard_rails.release_quiet_s == 1800
    state = ResponseState().after(plan([_alert("d1")], pb, _fleet(), ResponseState(), NOW), NOW)
    attested = NOW + timedelta(minutes=2)

    def view(last_alert: datetime | None) -> FleetView:
        return FleetView({"d1": DeviceView("d1", "seg-0", "thermo", True, attested_clean_at=attested,
                                           last_alert_at=last_alert)})

    # Its next alert came 5 minutes in (the rules re-alert every 5 minutes); another device's alert plans at 10.
    assert [a for a in plan([_alert("d2")], pb, view(NOW + timedelta(minutes=5)), state, NOW + timedelta(minutes=10))
            if a.kind is ActionKind.RELEASE] == []
    released = plan([], pb, view(NOW + timedelta(minutes=5)), state, NOW + timedelta(minutes=35))
    assert [(a.kind, a.reason) for a in released] == [(ActionKind.RELEASE, "clean_attestation")]


def test_release_quiet_time_is_bounded() -> None:
    with pytest.raises(ConfigError):
        parse_playbook(PLAYBOOK.replace(b"cooldown_s = 600", b"cooldown_s = 600\nrelease_quiet_s = -1"))
    with pytest.raises(ConfigError):
        parse_playbook(PLAYBOOK.replace(b"cooldown_s = 600", b"cooldown_s = 600\nrelease_quiet_s = 9999999"))
    assert default_playbook().guard_rails.release_quiet_s == 1800
