"""The response planner: alerts + playbook + fleet view + state -> actions.

:func:`plan` is pure. It decides which actions a playbook calls for and
applies the guard rails; the hub executes the actions marked ``execute``,
queues those marked ``await_approval`` for an operator, and writes every
action (suppressed ones too, with their reason) to the audit log, linked to
the alert that caused it. After executing, the hub records what it did with
:meth:`ResponseState.after`.

Guard rails, in order:

1. actions on an address that is not a fleet device are dropped (only
   ``notify`` applies);
2. ``quarantine`` of a device already quarantined is suppressed;
3. the same action on the same device within ``cooldown_s`` is suppressed;
4. actions listed in ``approval`` wait for an operator;
5. automatic quarantines per segment stop at the blast radius
   (``max(blast_radius_min_devices, floor(percent x segment size))``
   quarantined devices, counting those already quarantined); the rest wait
   for approval, the most severe alerts first;
6. a device the playbook quarantined is released once it attests clean
   after the quarantine, if ``auto_release`` is on, it has no new alert and
   none was raised on it for ``release_quiet_s``: a clean boot chain says
   nothing about malware that lives in memory (a Mirai-like scanner), and
   such a device goes on alerting while the quarantine holds, so a release
   between two of its alerts would let it out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from iotguard.detection.alert import Alert
from iotguard.detection.playbook import ActionKind, Playbook

__all__ = ["Action", "ActionStatus", "DeviceView", "FleetView", "ResponseState", "approve", "plan"]


class ActionStatus(StrEnum):
    """What the hub should do with a planned action."""

    EXECUTE = "execute"
    AWAIT_APPROVAL = "await_approval"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True)
class DeviceView:
    """What the planner needs to know about one device."""

    device: str
    segment: str
    model: str
    quarantined: bool = False
    attested_clean_at: datetime | None = None
    #: When the latest alert on the device was raised (``None``: none within the playbook's quiet time).
    last_alert_at: datetime | None = None


@dataclass(frozen=True)
class FleetView:
    """The fleet as the planner sees it."""

    devices: Mapping[str, DeviceView]

    def segment_sizes(self) -> Counter[str]:
        return Counter(d.segment for d in self.devices.values())

    def quarantined_per_segment(self) -> Counter[str]:
        return Counter(d.segment for d in self.devices.values() if d.quarantined)


@dataclass(frozen=True)
class Action:
    """One planned response step.

    Attributes:
        kind: What to do.
        device: To which device (or address, for ``notify`` about non-devices).
        status: Execute, wait for approval, or suppressed.
        reason: Why (``rule``, ``approval_required``, ``blast_radius``, ``cooldown``,
            ``already_quarantined``, ``not_a_device``, ``clean_attestation``).
        alert_id: The alert that caused it (empty for a release).
        rule: The playbook rule that asked for it.
        playbook: ``name@revision`` of the playbook.
    """

    kind: ActionKind
    device: str
    status: ActionStatus
    reason: str
    alert_id: str
    rule: str
    playbook: str


@dataclass(frozen=True)
class ResponseState:
    """What the playbook did before: last time of each (device, action), its own quarantines."""

    last_action: Mapping[tuple[str, str], datetime] = field(default_factory=dict)
    quarantined_at: Mapping[str, datetime] = field(default_factory=dict)

    def after(self, actions: Sequence[Action], now: datetime) -> ResponseState:
        """The state once the ``execute`` actions have been carried out at ``now``."""
        last = dict(self.last_action)
        quarantined = dict(self.quarantined_at)
        for a in actions:
            if a.status is not ActionStatus.EXECUTE:
                continue
            last[(a.device, a.kind.value)] = now
            if a.kind is ActionKind.QUARANTINE:
                quarantined[a.device] = now
            elif a.kind is ActionKind.RELEASE:
                quarantined.pop(a.device, None)
        return ResponseState(last, quarantined)


def _order(alert: Alert) -> tuple[int, float, str]:
    return (-int(alert.severity), -alert.score, alert.alert_id)


def plan(alerts: Sequence[Alert], playbook: Playbook, fleet: FleetView, state: ResponseState,
         now: datetime) -> list[Action]:
    """Actions the playbook calls for, with the guard rails applied (see the module docstring)."""
    rails = playbook.guard_rails
    tag = f"{playbook.name}@{playbook.revision}"
    sizes = fleet.segment_sizes()
    quarantined = fleet.quarantined_per_segment()
    seen: set[tuple[str, ActionKind]] = set()
    out: list[Action] = []
    for alert in sorted(alerts, key=_order):
        view = fleet.devices.get(alert.device)
        for rule in playbook.rules:
            if not rule.matches(alert, view.model if view else None):
                continue
            for kind in rule.actions:
                if (alert.device, kind) in seen:
                    continue
                seen.add((alert.device, kind))
                status, reason = ActionStatus.EXECUTE, "rule"
                last = state.last_action.get((alert.device, kind.value))
                if view is None and kind is not ActionKind.NOTIFY:
                    status, reason = ActionStatus.SUPPRESSED, "not_a_device"
                elif kind is ActionKind.QUARANTINE and view is not None and view.quarantined:
                    status, reason = ActionStatus.SUPPRESSED, "already_quarantined"
                elif last is not None and (now - last).total_seconds() < rails.cooldown_s:
                    status, reason = ActionStatus.SUPPRESSED, "cooldown"
                elif kind in rails.approval:
                    status, reason = ActionStatus.AWAIT_APPROVAL, "approval_required"
                elif kind is ActionKind.QUARANTINE and view is not None:
                    limit = max(rails.blast_radius_min_devices,
                                math.floor(rails.blast_radius_percent * sizes[view.segment] / 100.0))
                    if quarantined[view.segment] + 1 > limit:
                        status, reason = ActionStatus.AWAIT_APPROVAL, "blast_radius"
                    else:
                        quarantined[view.segment] += 1
                out.append(Action(kind, alert.device, status, reason, alert.alert_id, rule.name, tag))
    if rails.auto_release:
        alerted = {a.device for a in alerts}
        for device, since in sorted(state.quarantined_at.items()):
            view = fleet.devices.get(device)
            quiet = view is not None and (view.last_alert_at is None
                                          or (now - view.last_alert_at).total_seconds() >= rails.release_quiet_s)
            if (view is not None and view.quarantined and device not in alerted and quiet
                    and view.attested_clean_at is not None and view.attested_clean_at > since):
                out.append(Action(ActionKind.RELEASE, device, ActionStatus.EXECUTE, "clean_attestation", "",
                                  "auto_release", tag))
    return out


def approve(action: Action) -> Action:
    """The same action, approved by an operator (status ``execute``)."""
    return replace(action, status=ActionStatus.EXECUTE, reason="approved")
