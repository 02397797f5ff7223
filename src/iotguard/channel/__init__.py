"""Sealed telemetry channel: nonces, session keys, replay window, acknowledgements."""

from iotguard.channel.session import (
    AckMessage,
    ReplayWindow,
    SequenceAllocator,
    SessionKeys,
    UplinkSealer,
    ack_topic,
    decode_ack,
    encode_ack,
    make_nonce,
    session_info,
    split_session_keys,
    telemetry_topic,
)

__all__ = [
    "AckMessage",
    "ReplayWindow",
    "SequenceAllocator",
    "SessionKeys",
    "UplinkSealer",
    "ack_topic",
    "decode_ack",
    "encode_ack",
    "make_nonce",
    "session_info",
    "split_session_keys",
    "telemetry_topic",
]
