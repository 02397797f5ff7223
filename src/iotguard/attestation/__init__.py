"""Remote attestation (IETF RATS, RFC 9334): the verifier, reference values, appraisal policy.

A domain package: it appraises evidence bytes given the key bound to the
device, the nonce the caller issued, the reference values and the appraisal
policy, and a clock reading; it does no I/O.
"""

from iotguard.attestation.endorsement import load_ek_chain, load_ek_crl, load_ek_roots, verify_ek_certificate
from iotguard.attestation.policy import AppraisalPolicy, ClaimWeight, ModelPolicy, load_appraisal_policy
from iotguard.attestation.quote import QuoteInfo, parse_quote, verify_signature
from iotguard.attestation.reference import ReferenceRelease, ReferenceValues, reference_release
from iotguard.attestation.result import AR4SI_CLAIMS, EAR_PROFILE, AttestationResult, ClaimAppraisal, Tier
from iotguard.attestation.verifier import Verifier

__all__ = [
    "AR4SI_CLAIMS",
    "EAR_PROFILE",
    "AppraisalPolicy",
    "AttestationResult",
    "ClaimAppraisal",
    "ClaimWeight",
    "ModelPolicy",
    "QuoteInfo",
    "ReferenceRelease",
    "ReferenceValues",
    "Tier",
    "Verifier",
    "load_appraisal_policy",
    "load_ek_chain",
    "load_ek_crl",
    "load_ek_roots",
    "parse_quote",
    "reference_release",
    "verify_ek_certificate",
    "verify_signature",
]
