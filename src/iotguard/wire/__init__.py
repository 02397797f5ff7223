"""Wire formats: the telemetry envelope (v1), the sealed reading, the sealed media object, boot evidence (EAT)."""

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
from iotguard.wire.media import (
    MAX_MEDIA_OBJECT_BYTES,
    MediaObject,
    decode_media_object,
    encode_media_object,
)
from iotguard.wire.reading import Reading, decode_reading, encode_reading

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_DEVICE_ID_LENGTH",
    "MAX_MEDIA_OBJECT_BYTES",
    "BootEvent",
    "Envelope",
    "Evidence",
    "EvidenceClaims",
    "MediaObject",
    "Reading",
    "associated_data",
    "decode_envelope",
    "decode_evidence",
    "decode_media_object",
    "decode_reading",
    "encode_envelope",
    "encode_evidence",
    "encode_header",
    "encode_media_object",
    "encode_reading",
]
