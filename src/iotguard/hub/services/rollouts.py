"""Rollout campaigns in the hub: start, device check-ins, health gates, operator moves.

A device checks in (signed ``update_check`` request) with the version it
runs and how its last install ended; the answer names the release its
cohort should install now (0: none). A rollback report makes the campaign
evaluate its gates at once, so a broken release stops at its first cohort;
otherwise the hub's maintenance tick (:meth:`RolloutService.tick`) evaluates
every running campaign. Every move is one audit entry (``rollout.*``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotguard.audit import AuditEvent, AuditSink
from iotguard.clock import Clock
from iotguard.errors import MalformedError, RolloutStateError, UpdateRefused
from iotguard.hub.services.firmware import FirmwareService
from iotguard.hub.services.rollout_signals import CohortSignals
from iotguard.hub.stores.devices import DeviceStore
from iotguard.hub.stores.rollouts import OFFERED, REPORT_OUTCOMES, SEEN, DeviceReport, RolloutStore
from iotguard.rollout import (
    DEFAULT_STAGES,
    CohortHealth,
    GateVerdict,
    HealthGates,
    RolloutCampaign,
    RolloutState,
    Verdict,
    cohort_position,
    evaluate,
)

__all__ = ["RolloutService", "RolloutStatus"]

_PAGE = 1000
#: Outcome of a check-in that reports no finished attempt.
NO_OUTCOME = "none"


@dataclass(frozen=True)
class RolloutStatus:
    """A campaign with its current cohort's health and the last verdict."""

    campaign: RolloutCampaign
    health: CohortHealth
    verdict: GateVerdict

    def to_dict(self) -> dict[str, Any]:
        """JSON view (CLI and API)."""
        c, h = self.campaign, self.health
        return {
            "rollout_id": c.rollout_id, "model": c.model, "version": c.version, "state": str(c.state),
            "reason": c.reason, "stage": c.stage + 1, "stages": list(c.stages), "percent": c.percent,
            "stage_started_at": c.stage_started_at.isoformat(),
            "cohort": {"size": h.cohort_size, "checked_in": h.checked_in, "committed": h.committed,
                       "rolled_back": h.rolled_back,
                       "attested": h.attested, "attestation_failed": h.attestation_failed,
                       "readings": h.readings, "rejections": h.rejections},
            "verdict": str(self.verdict.verdict), "verdict_reason": self.verdict.reason,
        }


class RolloutService:
    """Runs staged rollouts of firmware releases.

    Args:
        store: Campaigns and device reports.
        devices: The device registry (models, status).
        firmware: The TUF repository (a campaign's release must be published).
        signals: Appraisals and telemetry of updated devices.
        audit: Where every campaign move is recorded.
        clock: Time source.
        challenge: Asks a device for fresh attestation evidence (the verifier's own view of the firmware it
            runs); called when a device reports a committed install. ``None``: the gates use the appraisals
            the hub gets anyway.
        announce: Tells devices to run an update round now (the ``update-check`` command through the outbox);
            called with the stage's devices that have not reported when a campaign starts, advances or resumes.
    """

    def __init__(self, store: RolloutStore, devices: DeviceStore, firmware: FirmwareService, signals: CohortSignals,
                 audit: AuditSink, clock: Clock, *, challenge: Callable[[str], None] | None = None,
                 announce: Callable[[Sequence[str]], None] | None = None) -> None:
        self.store = store
        self.devices = devices
        self.firmware = firmware
        self.signals = signals
        self.audit = audit
        self.clock = clock
        self.challenge = challenge
        self.announce = announce

    # -- operator moves --------------------------------------------------

    def start(self, model: str, version: int, *, actor: str, stages: Sequence[float] = DEFAULT_STAGES,
              gates: HealthGates | None = None, rollout_id: str | None = None) -> RolloutCampaign:
        """Start rolling release ``version`` of ``model`` out, first stage now.

        Raises:
            UpdateRefused: ``update_not_found`` when the release is not published.
            RolloutStateError: another campaign of the model is active, or the id is taken.
            MalformedError, ConfigError: bad id or stages.
        """
        if not any(r.version == version for r in self.firmware.releases(model)):
            raise UpdateRefused(f"release {version} of {model} is not published", code="update_not_found")
        now = self.clock.now()
        campaign = RolloutCampaign.start(rollout_id or f"{model}-{version}", model, version, now=now,
                                         stages=stages, gates=gates)
        self.store.create(campaign)
        self._record("rollout.started", campaign, actor, stages=list(campaign.stages))
        self._announce(campaign)
        return campaign

    def pause(self, rollout_id: str, *, actor: str, reason: str = "operator") -> RolloutCampaign:
        """Pause a running campaign (operator).

        Raises:
            UnknownRolloutError, RolloutStateError.
        """
        return self._move(self.store.get(rollout_id).paused(reason[:128]), "rollout.paused", actor)

    def resume(self, rollout_id: str, *, actor: str) -> RolloutCampaign:
        """Resume a paused campaign (operator).

        Raises:
            UnknownRolloutError, RolloutStateError.
        """
        return self._move(self.store.get(rollout_id).resumed(self.clock.now()), "rollout.resumed", actor)

    def abort(self, rollout_id: str, *, actor: str, reason: str = "operator") -> RolloutCampaign:
        """Abort a campaign for good (operator).

        Raises:
            UnknownRolloutError, RolloutStateError.
        """
        return self._move(self.store.get(rollout_id).aborted(reason[:128]), "rollout.aborted", actor)

    def status(self, rollout_id: str) -> RolloutStatus:
        """A campaign, its current cohort's health and what its gates say now.

        Raises:
            UnknownRolloutError: no such campaign.
        """
        campaign = self.store.get(rollout_id)
        health = self.health(campaign)
        return RolloutStatus(campaign, health, evaluate(campaign, health, self.clock.now()))

    def campaigns(self) -> list[RolloutCampaign]:
        """Every campaign."""
        return self.store.campaigns()

    # -- devices ---------------------------------------------------------

    def check_in(self, device_id: str, *, version: int, attempted: int, outcome: str) -> dict[str, Any]:
        """A device's update check-in (signed ``update_check`` request).

        ``outcome`` is ``none``, or how the attempt at release ``attempted``
        ended (``committed``, ``rolled_back``). Returns ``{"install": N,
        "rollout": id}``: the release to install now, 0 for none.

        Raises:
            MalformedError: unknown outcome.
        """
        if outcome != NO_OUTCOME and outcome not in REPORT_OUTCOMES:
            raise MalformedError("update outcome must be none, committed or rolled_back")
        model = self.devices.get_device(device_id).model
        campaign = self.store.active(model)
        if campaign is None:
            return {"install": 0, "rollout": ""}
        position = cohort_position(model, campaign.version, device_id)
        if outcome in REPORT_OUTCOMES and attempted == campaign.version:
            baseline = self.signals.rejection_totals([device_id]).get(device_id, 0)
            self.store.record_report(DeviceReport(campaign.rollout_id, device_id, outcome, self.clock.now(),
                                                  baseline, position))
            if outcome == "rolled_back":
                campaign = self._apply(campaign)
            elif self.challenge is not None:
                self.challenge(device_id)  # the device's word is not the evidence: the verifier's appraisal is
        previous = self.store.report_of(campaign.rollout_id, device_id)
        # A device that rolled back this release is never offered it again.
        if (not campaign.targets(device_id) or version >= campaign.version
                or (previous is not None and previous.outcome == "rolled_back") or outcome == "rolled_back"):
            if previous is None:  # reachable: once its stage comes, the gates wait for it
                self.store.record_report(DeviceReport(campaign.rollout_id, device_id, SEEN, self.clock.now(), 0,
                                                      position))
            return {"install": 0, "rollout": campaign.rollout_id}
        if previous is None or previous.outcome == SEEN:
            self.store.record_report(DeviceReport(campaign.rollout_id, device_id, OFFERED, self.clock.now(), 0,
                                                  position))
        return {"install": campaign.version, "rollout": campaign.rollout_id}

    # -- gates -----------------------------------------------------------

    def _cohort(self, campaign: RolloutCampaign) -> list[str]:
        members: list[str] = []
        offset = 0
        while True:
            page = self.devices.list_devices(status="active", limit=_PAGE, offset=offset)
            members += [d.device_id for d in page if d.model == campaign.model
                        and cohort_position(campaign.model, campaign.version, d.device_id) < campaign.percent]
            if len(page) < _PAGE:
                return members
            offset += _PAGE

    def health(self, campaign: RolloutCampaign) -> CohortHealth:
        """The current stage's cohort and what its updated devices report."""
        cohort = self._cohort(campaign)
        reports = {r.device_id: r for r in self.store.reports(campaign.rollout_id)}
        checked_in = [d for d in cohort if d in reports]
        committed = {d: reports[d] for d in checked_in if reports[d].outcome == "committed"}
        rolled_back = sum(1 for d in checked_in if reports[d].outcome == "rolled_back")
        since = {d: r.reported_at for d, r in committed.items()}
        # The verifier's appraisals judge every device the hub offered the release to, from the offer on
        # (or from its report): a device that reports nothing, or success, cannot hide a failed attestation.
        judged = {d: r.reported_at for d, r in reports.items() if r.outcome in (OFFERED, "committed")}
        attested, failed = self.signals.appraisals_since(judged)
        now_totals = self.signals.rejection_totals(list(committed))
        rejected = sum(max(0, now_totals.get(d, 0) - r.baseline_rejections) for d, r in committed.items())
        return CohortHealth(len(cohort), len(checked_in), len(committed), rolled_back, attested, failed,
                            self.signals.readings_since(since), rejected)

    def tick(self) -> list[RolloutCampaign]:
        """Evaluate every running campaign's gates and apply the verdicts (maintenance duty); returns every campaign."""
        moved = []
        for campaign in self.store.campaigns():
            for _ in campaign.stages:  # an empty or already healthy cohort lets several stages pass in one tick
                if campaign.state is not RolloutState.RUNNING:
                    break
                before = campaign.revision
                campaign = self._apply(campaign)
                if campaign.revision == before:
                    break
            moved.append(campaign)
        return moved

    def _apply(self, campaign: RolloutCampaign) -> RolloutCampaign:
        """Apply the gates' verdict; if another hub process moved the campaign meanwhile, its move stands."""
        try:
            return self._gate(campaign)
        except RolloutStateError:
            return self.store.get(campaign.rollout_id)

    def _gate(self, campaign: RolloutCampaign) -> RolloutCampaign:
        verdict = evaluate(campaign, self.health(campaign), self.clock.now())
        if verdict.verdict is Verdict.ABORT:
            return self._move(campaign.aborted(verdict.reason), "rollout.aborted", "rollout.gates")
        if verdict.verdict is Verdict.PAUSE:
            return self._move(campaign.paused(verdict.reason), "rollout.paused", "rollout.gates")
        if verdict.verdict is Verdict.ADVANCE:
            return self._move(campaign.advanced(self.clock.now()), "rollout.advanced", "rollout.gates")
        if verdict.verdict is Verdict.COMPLETE:
            return self._move(campaign.completed(), "rollout.completed", "rollout.gates")
        return campaign

    def _move(self, campaign: RolloutCampaign, event: str, actor: str) -> RolloutCampaign:
        self.store.save(campaign)
        self._record(event, campaign, actor)
        if campaign.state is RolloutState.RUNNING:  # advanced or resumed: the stage's devices may go now
            self._announce(campaign)
        return campaign

    def _announce(self, campaign: RolloutCampaign) -> None:
        """Tell the stage's devices that have not reported to run an update round now."""
        if self.announce is None:
            return
        reported = {r.device_id for r in self.store.reports(campaign.rollout_id) if r.outcome != SEEN}
        waiting = [d for d in self._cohort(campaign) if d not in reported]
        if waiting:
            self.announce(waiting)

    def _record(self, event: str, campaign: RolloutCampaign, actor: str, **extra: Any) -> None:
        now: datetime = self.clock.now()
        self.audit.record(AuditEvent(event, now, actor, campaign.model, {
            "rollout": campaign.rollout_id, "version": campaign.version, "stage": campaign.stage + 1,
            "percent": campaign.percent, "state": str(campaign.state), "reason": campaign.reason, **extra}))
