"""Device identity: fleet CA, enrollment and re-keying protocol."""

from iotguard.identity.ca import FleetCA, certificate_fingerprint
from iotguard.identity.enrollment import (
    EnrollmentCode,
    b64d,
    b64e,
    derive_hub_session,
    hub_response_message,
    negotiate_suite,
    new_enrollment_secret,
    parse_enrollment_code,
    request_transcript,
    session_salt,
    token_hash,
    verify_signature,
)

__all__ = [
    "EnrollmentCode",
    "FleetCA",
    "b64d",
    "b64e",
    "certificate_fingerprint",
    "derive_hub_session",
    "hub_response_message",
    "negotiate_suite",
    "new_enrollment_secret",
    "parse_enrollment_code",
    "request_transcript",
    "session_salt",
    "token_hash",
    "verify_signature",
]
