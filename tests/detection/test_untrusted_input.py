"""Untrusted bytes never crash the readers: every failure is a reason-coded MalformedError."""

from __future__ import annotations

import contextlib
import io

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from iotguard.detection import Alert, flows_from_pcap, parse_conn_log, parse_feed
from iotguard.errors import MalformedError

from .test_zeek import _log

SEED_LOG = _log("\t")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_as_conn_log(data: bytes) -> None:
    try:
        parse_conn_log(data, label_column="label")
    except MalformedError as exc:
        assert exc.code.startswith("zeek_")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SEED_LOG) - 1), st.binary(min_size=1, max_size=8))
def test_mutated_conn_log(pos: int, patch: bytes) -> None:
    data = SEED_LOG[:pos] + patch + SEED_LOG[pos + len(patch):]
    try:
        log = parse_conn_log(data, label_column="label")
    except MalformedError as exc:
        assert exc.code.startswith("zeek_")
    else:
        assert log.labels is not None and len(log.labels) == len(log.flows)


def _pcap_header() -> bytes:
    buf = io.BytesIO()
    dpkt.pcap.Writer(buf)
    return buf.getvalue()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1024))
def test_random_bytes_after_a_pcap_header(tail: bytes) -> None:
    try:
        result = flows_from_pcap(_pcap_header() + tail)
    except MalformedError as exc:
        assert exc.code.startswith("pcap_")
    else:
        assert all(f.duration >= 0 for f in result.flows)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_as_alert_or_feed(data: bytes) -> None:
    for decode in (Alert.from_cbor, parse_feed):
        with contextlib.suppress(MalformedError):
            decode(data)
