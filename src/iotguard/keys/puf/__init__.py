"""Physically unclonable functions: simulated SRAM and arbiter PUFs, quality
metrics, the fuzzy extractor, a PUF-rooted key store and PUF authentication."""

from iotguard.keys.puf.analysis import FailureRateEvidence, failure_rate_evidence
from iotguard.keys.puf.arbiter import ArbiterPuf, XorArbiterPuf, parity_features, random_challenges
from iotguard.keys.puf.auth import (
    MemoryPufRegistry,
    PufAuthResponse,
    PufChallenge,
    PufEnrollment,
    PufRegistry,
    PufVerifier,
    answer_challenge,
    enroll_puf,
)
from iotguard.keys.puf.enrollment import (
    PufEnrollmentAssessment,
    PufEnrollmentLimits,
    assess_enrollment,
    checked_enrollment_reference,
    helper_data_only_attack,
    key_entropy_bound,
)
from iotguard.keys.puf.fuzzy import (
    FuzzyExtractor,
    FuzzyExtractorParameters,
    HelperData,
    key_failure_probability,
)
from iotguard.keys.puf.keystore import PufKeyStore, PufSource, majority_reference
from iotguard.keys.puf.metrics import PufQuality, quality
from iotguard.keys.puf.modelling import ArbiterModel, logistic_regression_attack
from iotguard.keys.puf.sram import (
    NOMINAL,
    WORST_CASE,
    OperatingConditions,
    SramPuf,
    SramPufParameters,
    SramPufPopulation,
)

__all__ = [
    "NOMINAL",
    "WORST_CASE",
    "ArbiterModel",
    "ArbiterPuf",
    "FailureRateEvidence",
    "FuzzyExtractor",
    "FuzzyExtractorParameters",
    "HelperData",
    "MemoryPufRegistry",
    "OperatingConditions",
    "PufAuthResponse",
    "PufChallenge",
    "PufEnrollment",
    "PufEnrollmentAssessment",
    "PufEnrollmentLimits",
    "PufKeyStore",
    "PufQuality",
    "PufRegistry",
    "PufSource",
    "PufVerifier",
    "SramPuf",
    "SramPufParameters",
    "SramPufPopulation",
    "XorArbiterPuf",
    "answer_challenge",
    "assess_enrollment",
    "checked_enrollment_reference",
    "enroll_puf",
    "failure_rate_evidence",
    "helper_data_only_attack",
    "key_entropy_bound",
    "key_failure_probability",
    "logistic_regression_attack",
    "majority_reference",
    "parity_features",
    "quality",
    "random_challenges",
]
