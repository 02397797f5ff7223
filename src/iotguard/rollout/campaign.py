"""Rollout campaigns: cohorts, staged percentages and health gates (pure logic, no I/O).

A campaign rolls one release of one device model out in stages (by default
1 %, 10 %, 50 %, 100 % of the model's fleet). A device's place in the fleet
is fixed by a hash of the campaign's release and its id
(:func:`cohort_position`), so every hub process, and every re-run, puts the
same devices in the same cohort, and a stage's cohort always contains the
previous one.

After each stage the updated cohort's health decides what happens next
(:func:`evaluate`): devices that rolled back after their self-test abort the
campaign (the release is broken); failed attestations or a telemetry
rejection rate above the gate pause it (an operator looks, then resumes or
aborts); once enough of the cohort reports a committed install and the soak
time is over, the next stage starts. Operators pause, resume and abort.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from iotguard.errors import ConfigError, MalformedError, RolloutStateError

__all__ = [
    "DEFAULT_STAGES",
    "CohortHealth",
    "GateVerdict",
    "HealthGates",
    "RolloutCampaign",
    "RolloutState",
    "Verdict",
    "cohort_position",
    "evaluate",
    "in_cohort",
]

#: Stage percentages used when an operator names none.
DEFAULT_STAGES: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
_ROLLOUT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_MAX_STAGES = 16


class RolloutState(StrEnum):
    """Where a campaign is."""

    RUNNING = "running"
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"


@dataclass(frozen=True)
class HealthGates:
    """When a stage may advance, and when the campaign stops by itself.

    Attributes:
        max_rollback_rate: Largest share of the reporting cohort that rolled
            back after its self-test; above it the campaign aborts.
        max_attestation_failure_rate: Largest share of the updated cohort whose
            latest appraisal since the update is ``contraindicated``; above it
            the campaign pauses.
        max_rejection_rate: Largest share of the updated cohort's telemetry
            since the update that ingest rejected; above it the campaign pauses.
        min_reported: Share of the stage's checked-in cohort that must have
            reported a committed install before the next stage starts.
        soak: Time a stage runs at least before the next one starts.
    """

    max_rollback_rate: float = 0.0
    max_attestation_failure_rate: float = 0.0
    max_rejection_rate: float = 0.05
    min_reported: float = 0.9
    soak: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        for name in ("max_rollback_rate", "max_attestation_failure_rate", "max_rejection_rate", "min_reported"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"health gate {name} must be within 0..1")
        if self.min_reported <= 0.0:
            raise ConfigError("health gate min_reported must be above 0")
        if self.soak < timedelta(0):
            raise ConfigError("health gate soak must not be negative")


@dataclass(frozen=True)
class CohortHealth:
    """What the updated cohort reported since its stage started.

    Attributes:
        cohort_size: Devices of the model inside the stage's percentage.
        checked_in: Of those, devices that checked in during the campaign (a
            device that never checks in does not hold a stage up; one that
            checked in before its stage came is waited for). A stage whose
            cohort is not empty still needs one committed install: no stage
            passes on no evidence at all.
        committed: Devices that reported a committed install of the release.
        rolled_back: Devices that reported a rollback after the self-test.
        attested: Devices offered the release that the hub's verifier appraised since the offer (or since
            their report of a committed install), by their latest appraisal; what a device reports about
            itself does not enter this count.
        attestation_failed: Of those, appraised ``contraindicated``.
        readings: Telemetry the updated devices sent since their update (stored).
        rejections: Telemetry of the updated devices that ingest rejected since.
    """

    cohort_size: int
    checked_in: int = 0
    committed: int = 0
    rolled_back: int = 0
    attested: int = 0
    attestation_failed: int = 0
    readings: int = 0
    rejections: int = 0

    @property
    def reported(self) -> int:
        """Devices that finished an attempt (committed or rolled back)."""
        return self.committed + self.rolled_back


class Verdict(StrEnum):
    """What :func:`evaluate` decides for a running campaign."""

    HOLD = "hold"
    ADVANCE = "advance"
    COMPLETE = "complete"
    PAUSE = "pause"
    ABORT = "abort"


@dataclass(frozen=True)
class GateVerdict:
    """A decision and its reason code (``rollback_rate``, ``attestation_failures``, ...)."""

    verdict: Verdict
    reason: str = ""


def cohort_position(model: str, version: int, device_id: str) -> float:
    """A device's fixed place in ``[0, 100)`` for the rollout of ``model`` release ``version``.

    SHA-256 of the release and the device id, so the order is reproducible
    from public facts and differs between releases (the same devices are not
    always the first to take a risk).
    """
    digest = hashlib.sha256(f"iotguard-rollout-v1:{model}:{version}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100.0 / 2**64


def in_cohort(model: str, version: int, device_id: str, percent: float) -> bool:
    """Whether ``device_id`` is inside the first ``percent`` of the rollout's fleet."""
    return cohort_position(model, version, device_id) < percent


def _check_stages(stages: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in stages)
    if not values or len(values) > _MAX_STAGES:
        raise ConfigError(f"a rollout has 1..{_MAX_STAGES} stages")
    if any(not 0.0 < s <= 100.0 for s in values) or list(values) != sorted(set(values)):
        raise ConfigError("rollout stages are increasing percentages within (0, 100]")
    if values[-1] != 100.0:
        raise ConfigError("the last rollout stage is 100 %")
    return values


@dataclass(frozen=True)
class RolloutCampaign:
    """One staged rollout of release ``version`` of ``model``.

    Attributes:
        rollout_id: Name of the campaign (``[a-z0-9-]``).
        model: Device model.
        version: The release rolled out.
        stages: Increasing percentages ending at 100.
        gates: Health gates.
        stage: Index of the current stage.
        state: Running, paused, aborted or completed.
        reason: Why it is paused, aborted or completed (a reason code or the operator's note).
        stage_started_at: When the current stage started.
        revision: Incremented by each change (stores save compare-and-swap).
    """

    rollout_id: str
    model: str
    version: int
    stages: tuple[float, ...]
    gates: HealthGates
    stage: int
    state: RolloutState
    reason: str
    stage_started_at: datetime
    revision: int = 0

    @classmethod
    def start(cls, rollout_id: str, model: str, version: int, *, now: datetime,
              stages: Sequence[float] = DEFAULT_STAGES, gates: HealthGates | None = None) -> RolloutCampaign:
        """A new running campaign at its first stage.

        Raises:
            MalformedError: bad id, model or version.
            ConfigError: bad stages.
        """
        if not _ROLLOUT_ID.fullmatch(rollout_id):
            raise MalformedError("bad rollout id")
        if not model or isinstance(version, bool) or not 0 < version < 2**31:
            raise MalformedError("a rollout needs a model and a release version")
        return cls(rollout_id, model, version, _check_stages(stages), gates or HealthGates(), 0,
                   RolloutState.RUNNING, "", now)

    @property
    def percent(self) -> float:
        """The current stage's percentage of the fleet."""
        return self.stages[self.stage]

    @property
    def active(self) -> bool:
        """Running or paused (not finished)."""
        return self.state in (RolloutState.RUNNING, RolloutState.PAUSED)

    def targets(self, device_id: str) -> bool:
        """Whether ``device_id`` should install the release now (running, inside the current cohort)."""
        return self.state is RolloutState.RUNNING and in_cohort(self.model, self.version, device_id, self.percent)

    def _next(self, **changes: object) -> RolloutCampaign:
        return dataclasses.replace(self, revision=self.revision + 1, **changes)  # type: ignore[arg-type]

    def advanced(self, now: datetime) -> RolloutCampaign:
        """The campaign at its next stage.

        Raises:
            RolloutStateError: not running, or already at its last stage.
        """
        if self.state is not RolloutState.RUNNING or self.stage + 1 >= len(self.stages):
            raise RolloutStateError("only a running campaign before its last stage advances")
        return self._next(stage=self.stage + 1, stage_started_at=now)

    def completed(self) -> RolloutCampaign:
        """The campaign finished at 100 %."""
        if self.state is not RolloutState.RUNNING or self.stage + 1 != len(self.stages):
            raise RolloutStateError("only a running campaign at its last stage completes")
        return self._next(state=RolloutState.COMPLETED, reason="completed")

    def paused(self, reason: str) -> RolloutCampaign:
        """Paused (by its gates or an operator); devices not yet updated wait.

        Raises:
            RolloutStateError: not running.
        """
        if self.state is not RolloutState.RUNNING:
            raise RolloutStateError(f"a {self.state} campaign cannot be paused")
        return self._next(state=RolloutState.PAUSED, reason=reason)

    def resumed(self, now: datetime) -> RolloutCampaign:
        """Running again (operator); the current stage's soak starts over.

        Raises:
            RolloutStateError: not paused.
        """
        if self.state is not RolloutState.PAUSED:
            raise RolloutStateError(f"a {self.state} campaign cannot be resumed")
        return self._next(state=RolloutState.RUNNING, reason="", stage_started_at=now)

    def aborted(self, reason: str) -> RolloutCampaign:
        """Stopped for good (by its gates or an operator); no device is sent the release again.

        Raises:
            RolloutStateError: already finished.
        """
        if not self.active:
            raise RolloutStateError(f"a {self.state} campaign cannot be aborted")
        return self._next(state=RolloutState.ABORTED, reason=reason)


def evaluate(campaign: RolloutCampaign, health: CohortHealth, now: datetime) -> GateVerdict:
    """Decide what a running campaign does next from its updated cohort's health.

    Order matters: a broken release (rollbacks) aborts even when other
    signals look fine; attestation failures and telemetry rejections pause;
    only then may the stage advance (or the campaign complete).
    """
    if campaign.state is not RolloutState.RUNNING:
        return GateVerdict(Verdict.HOLD, str(campaign.state))
    gates = campaign.gates
    if health.reported and health.rolled_back / health.reported > gates.max_rollback_rate:
        return GateVerdict(Verdict.ABORT, "rollback_rate")
    if health.attested and health.attestation_failed / health.attested > gates.max_attestation_failure_rate:
        return GateVerdict(Verdict.PAUSE, "attestation_failures")
    sent = health.readings + health.rejections
    if sent and health.rejections / sent > gates.max_rejection_rate:
        return GateVerdict(Verdict.PAUSE, "telemetry_rejections")
    if health.committed < gates.min_reported * health.checked_in or (health.cohort_size and not health.committed):
        return GateVerdict(Verdict.HOLD, "waiting_for_reports")
    if now - campaign.stage_started_at < gates.soak:
        return GateVerdict(Verdict.HOLD, "soaking")
    if campaign.stage + 1 == len(campaign.stages):
        return GateVerdict(Verdict.COMPLETE, "completed")
    return GateVerdict(Verdict.ADVANCE, "healthy")
