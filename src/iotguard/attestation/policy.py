"""Appraisal policy: which claims matter for which device model (a TOML document).

Example (``docs/attestation.md`` explains every key)::

    [models.sensor-v1]
    max_age_seconds = 300
    max_clock_skew_seconds = 30
    stages = { bootloader = 0, kernel = 4, application = 10, privacy-configuration = 11 }
    executables = ["bootloader", "kernel", "application"]
    configuration = ["privacy-configuration"]
    hardware_affirming = ["tpm2"]
    hardware_warning = ["software"]

    [models.sensor-v1.claims]
    instance-identity = "required"
    executables = "required"
    configuration = "required"
    hardware = "advisory"

A claim weighted ``required`` decides the overall tier (contraindicated there
is contraindicated overall, and the overall tier is affirming only if every
required claim is); ``advisory`` can lower the tier to warning at most;
``ignored`` claims are reported but do not count. The document is parsed
strictly: unknown keys, an empty document or a model without a required
claim are errors (fail closed).
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from iotguard.attestation.result import AR4SI_CLAIMS
from iotguard.errors import ConfigError
from iotguard.keys.rot import PCR_COUNT

__all__ = ["AppraisalPolicy", "ClaimWeight", "ModelPolicy", "load_appraisal_policy"]

_MODEL_KEYS = {
    "max_age_seconds",
    "max_clock_skew_seconds",
    "stages",
    "executables",
    "configuration",
    "hardware_affirming",
    "hardware_warning",
    "claims",
}
_MAX_AGE_LIMIT = 7 * 24 * 3600


class ClaimWeight(StrEnum):
    """How much a trustworthiness claim counts for a model."""

    REQUIRED = "required"
    ADVISORY = "advisory"
    IGNORED = "ignored"


@dataclass(frozen=True)
class ModelPolicy:
    """The appraisal policy of one device model."""

    model: str
    max_age_seconds: int
    max_clock_skew_seconds: int
    stages: Mapping[str, int]
    executables: tuple[str, ...]
    configuration: tuple[str, ...]
    hardware_affirming: frozenset[str]
    hardware_warning: frozenset[str]
    claims: Mapping[str, ClaimWeight]

    @functools.cached_property
    def pcr_selection(self) -> tuple[int, ...]:
        """The PCRs the evidence must quote: those of the policy's stages (derived once per policy)."""
        return tuple(sorted(set(self.stages.values())))

    @functools.cached_property
    def stage_pcrs(self) -> tuple[tuple[str, int], ...]:
        """The stages and their PCRs as a hashable value (what an event-log replay depends on)."""
        return tuple(self.stages.items())

    @functools.cached_property
    def weighed_claims(self) -> tuple[str, ...]:
        """The claims that count (not ``ignored``), in the policy's order."""
        return tuple(claim for claim, weight in self.claims.items() if weight is not ClaimWeight.IGNORED)


@dataclass(frozen=True)
class AppraisalPolicy:
    """Appraisal policies by device model."""

    models: Mapping[str, ModelPolicy]

    def for_model(self, model: str) -> ModelPolicy | None:
        """The policy of ``model``, or ``None`` if the document has none for it."""
        return self.models.get(model)


def _names(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{what} must be a list of names")
    return tuple(value)


def _seconds(value: object, what: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_AGE_LIMIT:
        raise ConfigError(f"{what} must be 1..{_MAX_AGE_LIMIT} seconds")
    return value


def _model(name: str, raw: Any) -> ModelPolicy:
    if not isinstance(raw, dict):
        raise ConfigError(f"models.{name} must be a table")
    unknown = set(raw) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"models.{name}: unknown keys {sorted(unknown)}")
    stages = raw.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ConfigError(f"models.{name}.stages must map stage names to PCR indices")
    for stage, pcr in stages.items():
        if isinstance(pcr, bool) or not isinstance(pcr, int) or not 0 <= pcr < PCR_COUNT:
            raise ConfigError(f"models.{name}.stages.{stage} must be a PCR index")
    executables = _names(raw.get("executables", []), f"models.{name}.executables")
    configuration = _names(raw.get("configuration", []), f"models.{name}.configuration")
    for stage in executables + configuration:
        if stage not in stages:
            raise ConfigError(f"models.{name}: {stage!r} is not one of its stages")
    claims_raw = raw.get("claims")
    if not isinstance(claims_raw, dict) or not claims_raw:
        raise ConfigError(f"models.{name}.claims must weigh at least one claim")
    claims: dict[str, ClaimWeight] = {}
    for claim, weight in claims_raw.items():
        if claim not in AR4SI_CLAIMS:
            raise ConfigError(f"models.{name}.claims: unknown claim {claim!r}")
        try:
            claims[claim] = ClaimWeight(weight)
        except ValueError:
            raise ConfigError(f"models.{name}.claims.{claim} must be required, advisory or ignored") from None
    if ClaimWeight.REQUIRED not in claims.values():
        raise ConfigError(f"models.{name}: at least one claim must be required")
    return ModelPolicy(
        model=name,
        max_age_seconds=_seconds(raw.get("max_age_seconds"), f"models.{name}.max_age_seconds", 300),
        max_clock_skew_seconds=_seconds(raw.get("max_clock_skew_seconds"), "max_clock_skew_seconds", 30),
        stages=MappingProxyType(dict(stages)),
        executables=executables,
        configuration=configuration,
        hardware_affirming=frozenset(_names(raw.get("hardware_affirming", []), "hardware_affirming")),
        hardware_warning=frozenset(_names(raw.get("hardware_warning", []), "hardware_warning")),
        claims=MappingProxyType(claims),
    )


def load_appraisal_policy(text: str) -> AppraisalPolicy:
    """Parse an appraisal-policy TOML document.

    Raises:
        ConfigError: not TOML, no models, unknown keys, or a model without a required claim.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"appraisal policy is not TOML: {exc}") from None
    if set(doc) != {"models"} or not isinstance(doc["models"], dict) or not doc["models"]:
        raise ConfigError("appraisal policy must hold a non-empty [models] table and nothing else")
    return AppraisalPolicy(MappingProxyType({name: _model(name, raw) for name, raw in doc["models"].items()}))
