"""Wire formats: the telemetry envelope (v1) and the sealed reading."""

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
    "Envelope",
    "Reading",
    "associated_data",
    "decode_envelope",
    "decode_reading",
    "encode_envelope",
    "encode_header",
    "encode_reading",
]
