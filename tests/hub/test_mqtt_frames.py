"""The MQTT 3.1.1 subset the embedded broker's front parses: strict, bounded, deny by default."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotguard.errors import MalformedError
from iotguard.hub import mqtt_frames as mf

# CONNECT from paho 2.2 (MQTT 3.1.1, clean session, keepalive 60, client id "dev-1", user "u", password "p").
PAHO_CONNECT = bytes.fromhex("101700044d51545404c2003c00056465762d31000175000170")


def _body(packet: bytes) -> bytes:
    # One-byte remaining length in these fixtures.
    return packet[2:]


def test_connect_parses_and_reencodes_identically() -> None:
    c = mf.parse_connect(_body(PAHO_CONNECT))
    assert (c.client_id, c.username, c.password, c.keepalive, c.clean_session) == ("dev-1", "u", b"p", 60, True)
    assert mf.encode_connect(c) == PAHO_CONNECT


def test_identity_replaces_claimed_username_and_password() -> None:
    c = mf.parse_connect(_body(PAHO_CONNECT)).with_identity("dev-9/dev-1", "dev-9", b"secret")
    again = mf.parse_connect(mf.encode_connect(c)[2:])
    assert (again.client_id, again.username, again.password) == ("dev-9/dev-1", "dev-9", b"secret")


def test_will_topic_round_trips() -> None:
    c = mf.Connect("x", 30, True, will_topic="iotguard/a/b/telemetry", will_message=b"bye", will_qos=1)
    assert mf.parse_connect(mf.encode_connect(c)[2:]) == c


@pytest.mark.parametrize("body", [
    _body(PAHO_CONNECT).replace(b"MQTT\x04", b"MQTT\x05"),  # MQTT 5 is not supported by the front
    _body(PAHO_CONNECT).replace(b"MQTT", b"MQIs"),
    _body(PAHO_CONNECT)[:-1],  # truncated password
    _body(PAHO_CONNECT) + b"\x00",  # trailing bytes
    bytes.fromhex("00044d51545404c3003c00056465762d31000175000170"),  # reserved flag
    bytes.fromhex("00044d5154540442003c00056465762d31000170"),  # password without username
])
def test_bad_connect_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedError):
        mf.parse_connect(body)


def test_publish_topic_qos_and_packet_id() -> None:
    body = b"\x00\x05a/b/c" + b"\x00\x07" + b"payload"
    assert mf.parse_publish(0x02, body) == ("a/b/c", 1, 7)
    assert mf.parse_publish(0x00, b"\x00\x05a/b/c" + b"payload") == ("a/b/c", 0, None)
    for bad in (b"\x00\x03a/+", b"\x00\x01#", b"\x00\x00", b"\x00\x09a"):
        with pytest.raises(MalformedError):
            mf.parse_publish(0x02, bad + b"\x00\x01")
    with pytest.raises(MalformedError):
        mf.parse_publish(0x06, body)  # QoS 3


def test_subscribe_filters() -> None:
    body = b"\x00\x0a" + b"\x00\x03a/b\x01" + b"\x00\x01#\x00"
    assert mf.parse_subscribe(0x02, body) == (10, [("a/b", 1), ("#", 0)])
    for flags, bad in ((0x00, body), (0x02, b"\x00\x0a"), (0x02, b"\x00\x0a\x00\x03a/b\x03")):
        with pytest.raises(MalformedError):
            mf.parse_subscribe(flags, bad)


def test_remaining_length_encoding_matches_the_spec_examples() -> None:
    # MQTT 3.1.1 table 2.4 boundaries.
    assert mf.encode_remaining_length(0) == b"\x00"
    assert mf.encode_remaining_length(127) == b"\x7f"
    assert mf.encode_remaining_length(128) == b"\x80\x01"
    assert mf.encode_remaining_length(16_383) == b"\xff\x7f"
    assert mf.encode_remaining_length(16_384) == b"\x80\x80\x01"
    assert mf.encode_remaining_length(268_435_455) == b"\xff\xff\xff\x7f"
    with pytest.raises(MalformedError):
        mf.encode_remaining_length(268_435_456)


@pytest.mark.parametrize(("pattern", "topic", "matches"), [
    ("iotguard/+/+/telemetry", "iotguard/s/d/telemetry", True),
    ("iotguard/+/+/telemetry", "iotguard/s/d/ack", False),
    ("iotguard/+/+/telemetry", "iotguard/s/telemetry", False),
    ("iotguard/#", "iotguard/s/d/telemetry", True),
    ("#", "anything/at/all", True),
    ("a/b", "a/b/c", False),
])
def test_topic_matches(pattern: str, topic: str, matches: bool) -> None:
    assert mf.topic_matches(pattern, topic) is matches


def test_access_list_denies_by_default_and_never_widens_a_grant() -> None:
    acl = mf.AccessList({
        "dev-a": [("write", "iotguard/s/dev-a/telemetry"), ("read", "iotguard/s/dev-a/cmd")],
        "iotguard-hub": [("read", "iotguard/+/+/telemetry"), ("write", "iotguard/+/+/ack")],
    })
    assert acl.may_publish("dev-a", "iotguard/s/dev-a/telemetry")
    assert not acl.may_publish("dev-a", "iotguard/s/dev-b/telemetry")
    assert not acl.may_publish("dev-a", "iotguard/s/dev-a/cmd")
    assert not acl.may_publish("stranger", "iotguard/s/dev-a/telemetry")
    assert acl.may_subscribe("dev-a", "iotguard/s/dev-a/cmd")
    assert not acl.may_subscribe("dev-a", "iotguard/s/+/cmd")
    assert not acl.may_subscribe("dev-a", "#")
    assert acl.may_subscribe("iotguard-hub", "iotguard/+/+/telemetry")
    assert acl.may_subscribe("iotguard-hub", "$share/iotguard-hub/iotguard/+/+/telemetry")
    assert acl.may_subscribe("iotguard-hub", "iotguard/s/dev-a/telemetry")
    assert not acl.may_subscribe("iotguard-hub", "iotguard/#")
    assert acl.may_publish("iotguard-hub", "iotguard/s/dev-a/ack")
    assert acl.identities() == {"dev-a", "iotguard-hub"}


@given(st.binary(max_size=300))
def test_fuzz_parsers_only_raise_malformed(data: bytes) -> None:
    for parse in (mf.parse_connect, lambda b: mf.parse_publish(0x02, b), lambda b: mf.parse_subscribe(0x02, b),
                  mf.parse_suback):
        with contextlib.suppress(MalformedError):
            parse(data)
