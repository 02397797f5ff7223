"""Regressions from the first fuzz run (issue 18): timestamps that overflow ``datetime``.

Each decoder must answer out-of-range integers with ``MalformedError``, never
``ValueError``/``OverflowError`` (which a hub route would turn into a 500).
"""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotguard.clock import MAX_WIRE_TIMESTAMP, utc_from_wire
from iotguard.errors import MalformedError
from iotguard.privacy import ConsentAck, ConsentConfig, decode_receipt

# 2^53 - 1 and 10^15 pass the old "< 2^53" check but overflow datetime (year > 9999).
OVERFLOWING = [MAX_WIRE_TIMESTAMP + 1, 10**15, 2**53 - 1]


def _ack(applied_at: object) -> bytes:
    return cbor2.dumps({"v": 1, "type": "consent-ack", "device": "dev-1", "version": 1,
                        "config_sha256": bytes(32), "applied_at": applied_at}, canonical=True)


def _config(issued_at: object = 1, at: object = 1) -> bytes:
    return cbor2.dumps({"v": 1, "type": "consent-config", "device": "dev-1", "subject": "s-1", "version": 1,
                        "issued_at": issued_at, "purposes": {"research": {"granted": True, "at": at}}},
                       canonical=True)


@pytest.mark.parametrize("ts", OVERFLOWING)
def test_consent_ack_timestamp_overflow_is_malformed(ts: int) -> None:
    with pytest.raises(MalformedError, match="applied_at"):
        ConsentAck.decode(_ack(ts))


@pytest.mark.parametrize("ts", OVERFLOWING)
def test_consent_config_timestamp_overflow_is_malformed(ts: int) -> None:
    with pytest.raises(MalformedError, match="issued_at"):
        ConsentConfig.decode(_config(issued_at=ts))
    with pytest.raises(MalformedError, match="at"):
        ConsentConfig.decode(_config(at=ts))


def test_largest_timestamp_still_decodes() -> None:
    assert ConsentAck.decode(_ack(MAX_WIRE_TIMESTAMP)).applied_at.year == 9999
    assert ConsentConfig.decode(_config(issued_at=MAX_WIRE_TIMESTAMP)).issued_at.year == 9999
    for bad in (-1, True, 1.5, "1", None):
        with pytest.raises(MalformedError):
            utc_from_wire(bad, "t")


@pytest.mark.parametrize("field", ["issued_at", "first_ts", "last_ts"])
def test_receipt_timestamp_overflow_is_malformed(field: str) -> None:
    body = {"v": 1, "type": "privacy-receipt", "device": "dev-1", "model": "thermo-1", "contract_version": 1,
            "contract_sha256": bytes(32), "config_sha256": bytes(32), "readings_sha256": bytes(32),
            "issued_at": 1, "first_ts": 1, "last_ts": 1, "count": 1, "period": 0, "epsilon_spent": 0.0,
            "epsilon_period_total": 0.0, "budget_epsilon": 1.0, "purposes": {}}
    from iotguard.privacy.receipt import _BODY_KEYS

    assert set(body) == _BODY_KEYS
    decode_receipt(cbor2.dumps([cbor2.dumps(body), bytes(64)]))  # in range: well-formed
    body[field] = 10**15 if field == "issued_at" else 1000 * (MAX_WIRE_TIMESTAMP + 1)
    with pytest.raises(MalformedError, match=field):
        decode_receipt(cbor2.dumps([cbor2.dumps(body), bytes(64)]))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_any_integer_timestamp_decodes_or_is_malformed(ts: int) -> None:
    with contextlib.suppress(MalformedError):
        ConsentAck.decode(_ack(ts))
    with contextlib.suppress(MalformedError):
        ConsentConfig.decode(_config(issued_at=ts))
