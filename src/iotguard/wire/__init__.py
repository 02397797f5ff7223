"""Wire formats: the telemetry envelope (v1), the sealed reading, boot evidence (EAT)."""

from iotguard.wire.eat import BootEvent, Evidence, EvidenceClaims, decode_evidence, encode_evidence
from iotguard.wire.envelope import (
    ENVELOPE_VERSION,
    MAX_DEVICE_ID_LENGTH,
    Envelope,
    associated_data,
    decode_envelope,
    encode_envelope,
    encode_header,
)
from iotguard.wire.reading import Reading, decode_reading, encode_reading

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_DEVICE_ID_LENGTH",
    "BootEvent",
    "Envelope",
    "Evidence",
    "EvidenceClaims",
    "Reading",
    "associated_data",
    "decode_envelope",
    "decode_evidence",
    "decode_reading",
    "encode_envelope",
    "encode_evidence",
    "encode_header",
    "encode_reading",
]
