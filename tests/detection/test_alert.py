"""Alerts as data: stable CBOR/JSON encodings, strict decoding, ids."""

from __future__ import annotations

import cbor2
import pytest

from iotguard.detection import Alert, Severity
from iotguard.errors import MalformedError


def _alert() -> Alert:
    return Alert.create("sim-thermo-0", "scan_fanout", 316.5, Severity.HIGH, (1700000000.25, 1700000060.5),
                        {"address": "10.20.0.10", "flows": 2400, "ports": 2})


def test_cbor_and_json_round_trip() -> None:
    alert = _alert()
    assert Alert.from_cbor(alert.to_cbor()) == alert
    assert Alert.from_json(alert.to_json()) == alert
    assert alert.window_start_us == 1700000000250000


def test_encoding_is_stable() -> None:
    """The id an audit entry links to must not depend on evidence insertion order."""
    a = Alert.create("d", "x", 1.0, Severity.LOW, (1.0, 2.0), {"b": 1, "a": "z"})
    b = Alert.create("d", "x", 1.0, Severity.LOW, (1.0, 2.0), {"a": "z", "b": 1})
    assert a.to_cbor() == b.to_cbor() and a.alert_id == b.alert_id
    assert a.to_json() == '{"detector":"x","device":"d","evidence":{"a":"z","b":1},"score":1.0,' \
                          '"severity":"low","v":1,"window":[1000000,2000000]}'


def test_non_canonical_cbor_is_rejected() -> None:
    """A re-encoded alert with a different byte form would get a different id: refuse it."""
    obj = _alert().as_dict()
    noncanonical = cbor2.dumps(dict(reversed(list(obj.items()))))
    with pytest.raises(MalformedError):
        Alert.from_cbor(noncanonical)


@pytest.mark.parametrize("patch", [
    {"v": 2}, {"severity": "urgent"}, {"window": [5, 1]}, {"window": [1.5, 2]}, {"score": True},
    {"device": ""}, {"evidence": {"k": [1, 2]}}, {"extra": 1},
])
def test_malformed_alerts_are_rejected(patch) -> None:
    obj = _alert().as_dict() | patch
    with pytest.raises(MalformedError):
        Alert.from_dict(obj)


def test_oversized_and_garbage_input() -> None:
    with pytest.raises(MalformedError):
        Alert.from_cbor(b"\x00" * 5000)
    with pytest.raises(MalformedError):
        Alert.from_cbor(b"\xff\xff")
    with pytest.raises(MalformedError):
        Alert.from_json("{")
