"""Sealed telemetry channel: nonces, session keys, replay window, acknowledgements."""

from iotguard.channel.session import (
    TELEMETRY_FILTER,
    AckMessage,
    ReplayWindow,
    SequenceAllocator,
    SessionKeys,
    UplinkSealer,
    ack_topic,
    command_topic,
    decode_ack,
    decode_command,
    encode_ack,
    encode_command,
    make_nonce,
    session_info,
    split_session_keys,
    telemetry_topic,
)

__all__ = [
    "TELEMETRY_FILTER",
    "AckMessage",
    "ReplayWindow",
    "SequenceAllocator",
    "SessionKeys",
    "UplinkSealer",
    "ack_topic",
    "command_topic",
    "decode_ack",
    "decode_command",
    "encode_ack",
    "encode_command",
    "make_nonce",
    "session_info",
    "split_session_keys",
    "telemetry_topic",
]
