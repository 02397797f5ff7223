"""Attestation results in the shape of EAR / AR4SI.

An :class:`AttestationResult` carries an overall :class:`Tier` (EAR
``ear.status``) and a trustworthiness vector: one :class:`ClaimAppraisal` per
AR4SI claim (``instance-identity``, ``configuration``, ``executables``,
``file-system``, ``hardware``, ``runtime-opaque``, ``storage-opaque``,
``sourced-data``), each with the AR4SI tier and value (0 no claim, 2
affirming, 32 warning, 96 contraindicated) and the reason codes behind it.
Results are data: the policy engine, the audit log and the console read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

__all__ = ["AR4SI_CLAIMS", "EAR_PROFILE", "AttestationResult", "ClaimAppraisal", "Tier"]

#: The EAR profile a result follows (draft-ietf-rats-ear).
EAR_PROFILE = "tag:github.com,2023:veraison/ear"
#: AR4SI trustworthiness claims, in the draft's order.
AR4SI_CLAIMS = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)


class Tier(StrEnum):
    """AR4SI trustworthiness tiers, worst last."""

    NONE = "none"
    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"

    @property
    def value_code(self) -> int:
        """The AR4SI value of the tier's generic code (0, 2, 32, 96)."""
        return _AR4SI_VALUE[self]

    @property
    def rank(self) -> int:
        """Order for combining tiers: affirming < none < warning < contraindicated."""
        return _RANK[self]


_AR4SI_VALUE = {Tier.NONE: 0, Tier.AFFIRMING: 2, Tier.WARNING: 32, Tier.CONTRAINDICATED: 96}
_RANK = {Tier.AFFIRMING: 0, Tier.NONE: 1, Tier.WARNING: 2, Tier.CONTRAINDICATED: 3}


@dataclass(frozen=True, slots=True)
class ClaimAppraisal:
    """The appraisal of one trustworthiness claim.

    Attributes:
        tier: Affirming, warning, contraindicated, or none (not appraised).
        reasons: Reason codes (``executable_mismatch``, ``keystore_software``...).
    """

    tier: Tier = Tier.NONE
    reasons: tuple[str, ...] = ()

    @property
    def value(self) -> int:
        """AR4SI value of the claim."""
        return self.tier.value_code


@dataclass(frozen=True)
class AttestationResult:
    """The outcome of appraising one piece of evidence.

    Attributes:
        status: Overall tier, after the appraisal policy weighed the claims.
        trustworthiness_vector: One appraisal per AR4SI claim.
        reasons: Every reason code found, in check order (empty when affirming).
        model: Device model whose appraisal policy applied.
        appraised_at: When the verifier appraised (aware UTC).
        evidence_issued_at: The evidence's issue time, if it was readable.
        firmware_version: The version the evidence claimed, if readable.
        keystore_kind: The root-of-trust kind the evidence claimed, if readable.
    """

    status: Tier
    trustworthiness_vector: Mapping[str, ClaimAppraisal]
    reasons: tuple[str, ...]
    model: str
    appraised_at: datetime
    evidence_issued_at: datetime | None = None
    firmware_version: str = ""
    keystore_kind: str = ""
    policy: Mapping[str, str] = field(default_factory=dict)
    """The claim weights of the appraisal policy that applied."""

    @property
    def affirming(self) -> bool:
        """Whether the overall status is affirming."""
        return self.status is Tier.AFFIRMING

    def to_ear(self, verifier_id: str = "iotguard") -> dict[str, object]:
        """The result as an EAR claims set (JSON-ready; the hub signs it if it ships it)."""
        vector = {k: v.value for k, v in self.trustworthiness_vector.items() if v.tier is not Tier.NONE}
        return {
            "eat_profile": EAR_PROFILE,
            "iat": int(self.appraised_at.timestamp()),
            "ear.verifier-id": {"developer": "iotguard", "build": verifier_id},
            "submods": {
                "boot": {
                    "ear.status": self.status.value,
                    "ear.trustworthiness-vector": vector,
                    "iotguard.reasons": list(self.reasons),
                    "iotguard.firmware-version": self.firmware_version,
                }
            },
        }
