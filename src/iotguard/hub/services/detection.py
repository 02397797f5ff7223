"""The detection service: alerts in, the active playbook's response out, every step audited.

:meth:`DetectionService.raise_alerts` stores each new alert (its audit entry
``detection.alert`` is written to the outbox in the same transaction), asks
the pure planner :func:`~iotguard.detection.plan` what the playbook calls for
with the guard rails applied (blast radius per segment, approval for
destructive actions, cool-downs), carries out the actions marked ``execute``
and records every action, suppressed and waiting ones too, as a
``detection.action`` audit entry naming the alert that caused it.

What each action does on the hub:

* ``quarantine`` -- :meth:`PostureService.quarantine`: Cedar denies the
  device at once in this process, the broker ACL rewrite goes through the
  outbox;
* ``revoke`` -- :meth:`DeviceLifecycle.revoke` (waits for approval under the
  shipped playbook);
* ``release`` -- :meth:`PostureService.release` (the policy may refuse it);
* ``reattest`` -- the ``reattest`` callable (the hub's
  :meth:`AttestationService.queue_challenge`: a nonce stored and the challenge
  queued for the device's ``cmd`` topic; see
  :mod:`iotguard.hub.services.detection_actions`);
* ``notify`` -- the notifier given to the service (none configured: recorded
  as ``not_available``);
* ``rollback`` -- the ``rollback`` callable (the hub's
  :class:`~iotguard.hub.services.detection_actions.FirmwareRollback`: the
  rollout that brought the device its release is aborted; waits for approval
  under the shipped playbook).

A service built without ``reattest`` or ``rollback`` records those steps as
``not_available``.

Actions waiting for approval are carried out by :meth:`approve`.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from iotguard.audit import AuditEvent, AuditSink
from iotguard.clock import Clock
from iotguard.detection import Action, ActionKind, ActionStatus, Alert, DeviceView, FleetView, Playbook, Severity
from iotguard.detection.playbook import MAX_PLAYBOOK_BYTES, default_playbook, parse_playbook
from iotguard.detection.response import ResponseState, plan
from iotguard.errors import IotGuardError, UnknownAlertError
from iotguard.fileio import atomic_write
from iotguard.hub.services.audit import audit_message
from iotguard.hub.services.posture import PostureService
from iotguard.hub.stores.alerts import AlertStore, StoredAction, StoredAlert

__all__ = [
    "DETECTION_ACTOR",
    "PLAYBOOK_FILE",
    "RISK_HALF_LIFE_S",
    "RISK_WEIGHT",
    "ActivePlaybook",
    "DetectionService",
    "Notifier",
    "WebhookNotifier",
    "activate_playbook",
]

log = logging.getLogger(__name__)

#: The actor named in audit entries of automatic responses.
DETECTION_ACTOR = "hub.detection"

#: Sends one alert notification (a webhook); raises IotGuardError on failure.
Notifier = Callable[[Alert, Action], None]

#: Risk each alert adds to its device, by severity (the sum decays with :data:`RISK_HALF_LIFE_S`, capped at 100).
RISK_WEIGHT = {Severity.LOW: 5.0, Severity.MEDIUM: 20.0, Severity.HIGH: 45.0, Severity.CRITICAL: 80.0}
#: Half-life of an alert's contribution to its device's risk: a device that behaves sheds risk.
RISK_HALF_LIFE_S = 3600.0
#: Alerts older than this many half-lives no longer count (their contribution is below 1 %).
_RISK_HORIZON = 7

#: The active playbook's file name in the hub's data directory (absent: the shipped default).
PLAYBOOK_FILE = "playbook.toml"

class ActivePlaybook:
    """The playbook activated in a data directory, else the shipped default (parsed again only when the file
    changes; a callable for :class:`DetectionService`)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / PLAYBOOK_FILE
        self._cached: tuple[tuple[int, int], Playbook] | None = None

    def __call__(self) -> Playbook:
        """Raises ConfigError ``playbook_invalid`` when the activated file no longer parses."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return default_playbook()
        key = (st.st_mtime_ns, st.st_size)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        book = parse_playbook(self.path.read_bytes()[:MAX_PLAYBOOK_BYTES + 1])
        for warning in book.unsafe:
            log.warning("UNSAFE playbook option in %s@%d: %s", book.name, book.revision, warning)
        self._cached = (key, book)
        return book


def activate_playbook(data_dir: Path, data: bytes, *, actor: str, audit: AuditSink, now: datetime) -> Playbook:
    """Validate a playbook and make it the active one (atomically replaced; audited as ``detection.playbook``).

    Raises:
        ConfigError: ``playbook_invalid``.
    """
    book = parse_playbook(data)
    atomic_write(data_dir / PLAYBOOK_FILE, data)
    audit.record(AuditEvent("detection.playbook", now, actor, "playbook", {
        "name": book.name, "revision": book.revision, "sha256": hashlib.sha256(data).hexdigest()}))
    return book


class WebhookNotifier:
    """Posts ``notify`` actions to the active playbook's webhook (HTTPS, short timeout, no reading bodies).

    The body is JSON: the alert (its canonical fields and id) and the action
    (kind, device, rule, playbook).

    Args:
        playbook: Returns the active playbook (its ``[notify] webhook``).
        verify: TLS verification: True (system CAs) or a CA bundle path.
        timeout_s: Connect and read timeout.
    """

    def __init__(self, playbook: Callable[[], Playbook], *, verify: str | bool = True,
                 timeout_s: float = 2.0) -> None:
        self._playbook = playbook
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=verify) if isinstance(verify, str) \
            else verify
        self.timeout_s = timeout_s

    def __call__(self, alert: Alert, action: Action) -> None:
        """Raises IotGuardError ``notify_unavailable`` (no webhook) or ``notify_failed``."""
        url = self._playbook().webhook
        if url is None:
            raise IotGuardError("the playbook configures no webhook", code="notify_unavailable")
        body = {"alert_id": alert.alert_id, "alert": alert.as_dict(), "action": action.kind.value,
                "device": action.device, "rule": action.rule, "playbook": action.playbook}
        try:
            r = httpx.post(url, json=body, timeout=self.timeout_s, verify=self.verify, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise IotGuardError(f"webhook unreachable ({type(exc).__name__})", code="notify_failed") from None
        if not 200 <= r.status_code < 300:
            raise IotGuardError(f"webhook answered {r.status_code}", code="notify_failed")


#: Response actions that change what a device may do at the broker.
_ACCESS_CHANGES = frozenset({ActionKind.QUARANTINE.value, ActionKind.RELEASE.value, ActionKind.REVOKE.value})


class DetectionService:
    """Stores alerts and executes the playbook's response with its guard rails.

    Args:
        alerts: The alert and action store.
        posture: Quarantine and release (and the fleet view the planner reads).
        revoke: Revokes a device's credentials (``DeviceLifecycle.revoke``).
        playbook: Returns the active playbook (read at each batch of alerts, so activation needs no restart).
        clock: Time source.
        notifier: Delivers ``notify`` actions (None: recorded as not available).
        reattest: Issues an attestation challenge to a device (None: recorded as not available).
        rollback: Stops the rollout of the release a device received, ``(device, actor=, reason=)``
            (None: recorded as not available).
    """

    def __init__(self, alerts: AlertStore, posture: PostureService, revoke: Callable[..., None],
                 playbook: Callable[[], Playbook], clock: Clock, *, notifier: Notifier | None = None,
                 reattest: Callable[[str], object] | None = None,
                 rollback: Callable[..., object] | None = None) -> None:
        self.store = alerts
        self.posture = posture
        self._revoke = revoke
        self._playbook = playbook
        self.clock = clock
        self.notifier = notifier
        self.reattest = reattest
        self.rollback = rollback
        #: Called after a response changed a device's access (quarantine, release, revocation), so the
        #: process delivers the outbox (broker ACL) now rather than at its next maintenance tick.
        self.after_containment: Callable[[], None] | None = None

    @property
    def playbook(self) -> Playbook:
        """The active playbook."""
        return self._playbook()

    # -- views -----------------------------------------------------------

    def fleet(self, now: datetime | None = None, alert_horizon_s: float = 0.0) -> FleetView:
        """Active devices as the planner sees them (segment, model, quarantine, clean attestation), and with
        ``alert_horizon_s`` the time of each device's latest alert within that long before ``now``."""
        last: dict[str, datetime] = {}
        if alert_horizon_s > 0:
            now = now or self.clock.now()
            for a in self.store.alerts(limit=100_000):
                if (now - a.raised_at).total_seconds() > alert_horizon_s:
                    break  # newest first: the rest are older
                last.setdefault(a.alert.device, a.raised_at)
        return FleetView({p.device_id: DeviceView(p.device_id, p.segment, p.model, p.quarantined,
                                                  p.attested_at if p.trust_tier == "verified" else None,
                                                  last.get(p.device_id))
                          for p in self.posture.posture})

    def state(self, now: datetime | None = None, cooldown_s: float | None = None) -> ResponseState:
        """What earlier responses did, from the stored actions (cool-downs, the playbook's own quarantines).

        With ``now`` and ``cooldown_s`` only the actions that can still matter are read: those within the
        cool-down, and quarantines and releases of any age."""
        last: dict[tuple[str, str], datetime] = {}
        quarantined: dict[str, datetime] = {}
        if now is not None and cooldown_s is not None:
            done = self.store.done_actions(now - timedelta(seconds=cooldown_s),
                                           (ActionKind.QUARANTINE.value, ActionKind.RELEASE.value))
        else:
            done = [a for a in self.store.actions() if a.outcome == "done"]
        for a in done:
            last[(a.device_id, a.kind)] = a.at
            if a.kind == ActionKind.QUARANTINE.value:
                quarantined[a.device_id] = a.at
            elif a.kind == ActionKind.RELEASE.value:
                quarantined.pop(a.device_id, None)
        return ResponseState(last, quarantined)

    def alerts(self, *, device_id: str | None = None, unacked: bool = False, limit: int = 100) -> list[StoredAlert]:
        return self.store.alerts(device_id=device_id, unacked=unacked, limit=limit)

    def alert(self, alert_id: str) -> tuple[StoredAlert, list[StoredAction]]:
        """One alert and the actions taken for it (raises UnknownAlertError)."""
        return self.store.get(alert_id), self.store.actions(alert_id=alert_id)

    def counts(self) -> dict[tuple[str, int], int]:
        return self.store.counts()

    def risk_scores(self, now: datetime | None = None) -> dict[str, int]:
        """Each device's risk from its recent alerts: the sum of :data:`RISK_WEIGHT` halved every
        :data:`RISK_HALF_LIFE_S` since the alert was raised, capped at 100 (a pure function of the stored
        alerts, so every hub process computes the same value)."""
        now = now or self.clock.now()
        horizon = RISK_HALF_LIFE_S * _RISK_HORIZON
        risk: dict[str, float] = {}
        for a in self.store.alerts(limit=100_000):
            age = (now - a.raised_at).total_seconds()
            if age > horizon:
                break  # newest first: the rest are older
            risk[a.alert.device] = risk.get(a.alert.device, 0.0) + RISK_WEIGHT[a.alert.severity] * 0.5 ** (
                max(0.0, age) / RISK_HALF_LIFE_S)
        return {d: min(100, round(r)) for d, r in risk.items()}

    def refresh_risk(self, now: datetime | None = None) -> list[str]:
        """Bring the posture's risk scores in line with the alerts (rising at once, decaying as devices behave);
        the default policy's risk rules read them. Returns the devices whose score changed."""
        scores = self.risk_scores(now)
        for p in self.posture.posture:
            if p.risk_score and p.device_id not in scores:
                scores[p.device_id] = 0
        return self.posture.set_risk(scores)

    # -- changes ---------------------------------------------------------

    def raise_alerts(self, alerts: Sequence[Alert]) -> list[StoredAction]:
        """Store the new alerts and carry out the playbook's response; returns the recorded actions.

        An alert already stored (same content hash) is ignored, so a sensor
        that re-sends a batch does not trigger the response twice.
        """
        now = self.clock.now()
        items = []
        for alert in alerts:
            event = AuditEvent("detection.alert", now, DETECTION_ACTOR, alert.device, {
                "alert_id": alert.alert_id, "detector": alert.detector,
                "severity": alert.severity.name.lower(), "score_milli": round(alert.score * 1000),
                "window": [alert.window_start_us, alert.window_end_us]})
            items.append((alert, [audit_message(event)]))
        # One transaction for the batch: a stored alert is never answered twice (two hub processes, a re-sent batch).
        fresh = self.store.add_alerts(items, now)
        if not fresh:
            return []
        by_id = {a.alert_id: a for a in fresh}
        book = self._playbook()
        rails = book.guard_rails
        fleet = self.fleet(now, rails.release_quiet_s if rails.auto_release else 0.0)
        planned = plan(fresh, book, fleet, self.state(now, rails.cooldown_s), now)
        # Containment first (its own commit, with its audit entry and the broker ACL message), then the delivery
        # is woken, and only then the bookkeeping: every action's record in one transaction, the risk scores.
        done = self._carry_out_all([(action, by_id.get(action.alert_id)) for action in planned], DETECTION_ACTOR)
        self.refresh_risk()
        return done

    def awaiting_approval(self) -> list[StoredAction]:
        """Actions waiting for an operator (not approved yet), oldest first."""
        actions = self.store.actions()
        approved = {(a.alert_id, a.device_id, a.kind) for a in actions if a.reason == "approved"}
        return [a for a in actions if a.outcome == "awaiting_approval" and (a.alert_id, a.device_id, a.kind)
                not in approved]

    def pending(self, action_id: int) -> StoredAction:
        """An action waiting for approval.

        Raises:
            UnknownAlertError: no such action waits for approval (or it was approved already).
        """
        found = [a for a in self.store.actions() if a.id == action_id and a.outcome == "awaiting_approval"]
        if not found:
            raise UnknownAlertError(f"action {action_id} is not waiting for approval")
        p = found[0]
        if any(a.kind == p.kind and a.reason == "approved"
               for a in self.store.actions(alert_id=p.alert_id, device_id=p.device_id)):
            raise UnknownAlertError(f"action {action_id} was approved already")
        return p

    def approve(self, action_id: int, actor: str) -> StoredAction:
        """Carry out an action that was waiting for approval; returns the recorded execution.

        Raises:
            UnknownAlertError: no such action waits for approval.
        """
        p = self.pending(action_id)
        action = Action(ActionKind(p.kind), p.device_id, ActionStatus.EXECUTE, "approved", p.alert_id, p.rule,
                        p.playbook)
        try:
            alert: Alert | None = self.store.get(p.alert_id).alert
        except IotGuardError:
            alert = None
        return self._carry_out_all([(action, alert)], actor)[0]

    def ack(self, alert_id: str, actor: str) -> StoredAlert:
        """Acknowledge an alert (audited; raises UnknownAlertError)."""
        now = self.clock.now()
        current = self.store.get(alert_id)
        event = AuditEvent("detection.acknowledged", now, actor, current.alert.device, {"alert_id": alert_id})
        return self.store.ack(alert_id, actor, now, effects=[audit_message(event)])

    def _execute(self, action: Action, alert: Alert | None) -> str:
        reason = f"alert {action.alert_id[:16]} ({action.rule})" if action.alert_id else action.reason
        try:
            if action.kind is ActionKind.QUARANTINE:
                self.posture.quarantine(action.device, actor=DETECTION_ACTOR, reason=reason)
            elif action.kind is ActionKind.RELEASE:
                self.posture.release(action.device, actor=DETECTION_ACTOR, reason=reason)
            elif action.kind is ActionKind.REVOKE:
                self._revoke(action.device, actor=DETECTION_ACTOR, reason=reason)
            elif action.kind is ActionKind.NOTIFY:
                if self.notifier is None or alert is None:
                    return "not_available"
                self.notifier(alert, action)
            elif action.kind is ActionKind.REATTEST:
                if self.reattest is None:
                    return "not_available"
                self.reattest(action.device)
            elif action.kind is ActionKind.ROLLBACK:
                if self.rollback is None:
                    return "not_available"
                self.rollback(action.device, actor=DETECTION_ACTOR, reason=reason)
        except IotGuardError as exc:
            log.warning("response %s on %s failed: %s", action.kind.value, action.device, exc.code)
            return f"failed:{exc.code}"
        return "done"

    def _carry_out_all(self, actions: Sequence[tuple[Action, Alert | None]], actor: str) -> list[StoredAction]:
        """Execute the actions marked ``execute`` (access changes first, so containment is not kept waiting by
        the slower steps), wake the delivery of access changes, then record every action in one transaction."""
        outcomes: dict[int, str] = {}
        for access_change in (True, False):
            for i, (action, alert) in enumerate(actions):
                if (action.kind.value in _ACCESS_CHANGES) is not access_change:
                    continue
                if action.status is ActionStatus.EXECUTE:
                    outcomes[i] = self._execute(action, alert)
                elif action.status is ActionStatus.AWAIT_APPROVAL:
                    outcomes[i] = "awaiting_approval"
                else:
                    outcomes[i] = "suppressed"
            if access_change and self.after_containment is not None and "done" in outcomes.values():
                self.after_containment()
        now = self.clock.now()
        items = []
        for i, (action, _) in enumerate(actions):
            record = StoredAction(0, action.alert_id, action.device, action.kind.value, action.status.value,
                                  action.reason, action.rule, action.playbook, outcomes[i], now)
            event = AuditEvent("detection.action", now, actor, action.device, {
                "alert_id": action.alert_id, "action": action.kind.value, "status": action.status.value,
                "reason": action.reason, "rule": action.rule, "playbook": action.playbook, "outcome": outcomes[i]})
            items.append((record, [audit_message(event)]))
        return self.store.add_actions(items)
