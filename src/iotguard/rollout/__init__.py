"""Rollout campaigns for firmware releases: cohorts, stages, health gates.

Domain package: no I/O. The hub's :class:`~iotguard.hub.services.rollouts.RolloutService`
stores campaigns, collects the health of each updated cohort and applies
:func:`evaluate`'s verdicts.
"""

from iotguard.rollout.campaign import (
    DEFAULT_STAGES,
    CohortHealth,
    GateVerdict,
    HealthGates,
    RolloutCampaign,
    RolloutState,
    Verdict,
    cohort_position,
    evaluate,
    in_cohort,
)

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
