"""Remote attestation (IETF RATS, RFC 9334): the verifier, reference values, appraisal policy.

A domain package: it appraises evidence bytes given the key bound to the
device, the nonce the caller issued, the reference values and the appraisal
policy, and a clock reading; it does no I/O.
"""

from iotguard.attestation.quote import QuoteInfo, parse_quote, verify_signature

__all__ = ["QuoteInfo", "parse_quote", "verify_signature"]
