"""The sensor's flow report: round trip, limits, and one reason code per malformed report."""

from __future__ import annotations

from typing import Any

import cbor2
import numpy as np
import pytest

from iotguard.detection import (
    FlowBatch,
    FlowMonitor,
    FlowReportLimits,
    MonitorConfig,
    decode_flow_report,
    encode_flow_report,
    parse_address_inventory,
    split_for_reports,
)
from iotguard.errors import ConfigError, MalformedError
from iotguard.sim import traffic
from tests.detection.conftest import T0, batches


def _batch(n: int = 50) -> FlowBatch:
    fleet = traffic.make_fleet(per_model=1, segments=1)
    return FlowBatch.from_flows(traffic.benign_traffic(fleet, T0, 600.0).flows[:n])


def _same(a: FlowBatch, b: FlowBatch) -> None:
    for name in FlowBatch.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_flow_report_round_trips_every_column() -> None:
    batch = _batch()
    _same(decode_flow_report(encode_flow_report(batch)), batch)


def test_large_batches_split_into_reports_within_the_limits() -> None:
    batch = _batch(2000)
    limits = FlowReportLimits(max_flows=300, max_bytes=12_000)
    reports = split_for_reports(batch, limits)
    assert all(len(r) <= limits.max_bytes for r in reports)
    decoded = [decode_flow_report(r, limits) for r in reports]
    assert all(len(d) <= 300 for d in decoded)
    whole = FlowBatch(**{n: np.concatenate([getattr(d, n) for d in decoded]) for n in FlowBatch.__dataclass_fields__})
    _same(whole, batch)


def _body(batch: FlowBatch | None = None) -> dict[str, Any]:
    return dict(cbor2.loads(encode_flow_report(batch or _batch(4))))


def _code(data: bytes, limits: FlowReportLimits | None = None) -> str:
    with pytest.raises(MalformedError) as info:
        decode_flow_report(data, limits)
    return info.value.code


def _mutated(**changes: Any) -> bytes:
    body = _body()
    body.update(changes)
    return bytes(cbor2.dumps(body, canonical=True))


def test_oversized_report_refused_before_parsing() -> None:
    assert _code(b"\xa0" + b"\x00" * 60_000) == "flow_report_too_large"


@pytest.mark.parametrize(("data", "code"), [
    (b"\xff\x00", "flow_report_not_cbor"),
    (cbor2.dumps([1, 2]), "flow_report_bad_keys"),
])
def test_report_that_is_not_a_report_is_refused(data: bytes, code: str) -> None:
    assert _code(data) == code


def test_non_canonical_report_refused() -> None:
    """An integer in a longer form than needed decodes to the same map but is not the canonical encoding."""
    canonical = bytes(cbor2.dumps(_body(), canonical=True))
    longer = canonical.replace(b"\x61n\x04", b"\x61n\x18\x04", 1)
    assert longer != canonical and _code(longer) == "flow_report_not_canonical"


def test_extra_or_missing_key_refused() -> None:
    body = _body()
    del body["service"]
    assert _code(bytes(cbor2.dumps(body, canonical=True))) == "flow_report_bad_keys"
    assert _code(_mutated(extra=1)) == "flow_report_bad_keys"


def test_wrong_version_refused() -> None:
    assert _code(_mutated(v=2)) == "flow_report_version"


def test_flow_count_outside_the_limit_refused() -> None:
    assert _code(_mutated(n=0)) == "flow_report_too_many"
    assert _code(encode_flow_report(_batch(20)), FlowReportLimits(max_flows=10)) == "flow_report_too_many"


@pytest.mark.parametrize("hosts", [[], ["10.0.0.1"] * 2, ["a b"], ["x" * 65], [""], [7]])
def test_bad_host_table_refused(hosts: list[Any]) -> None:
    assert _code(_mutated(hosts=hosts)) == "flow_report_bad_hosts"


def test_column_of_the_wrong_length_refused() -> None:
    body = _body()
    assert _code(_mutated(ts=body["ts"][:-8])) == "flow_report_bad_column"
    assert _code(_mutated(proto="tcp")) == "flow_report_bad_column"


def test_host_index_outside_the_table_refused() -> None:
    assert _code(_mutated(orig=np.full(4, 999, dtype="<u2").tobytes())) == "flow_report_bad_index"


def test_unknown_state_or_protocol_code_refused() -> None:
    assert _code(_mutated(state=bytes([0, 1, 2, 200]))) == "flow_report_bad_code"
    assert _code(_mutated(proto=bytes([0, 0, 0, 4]))) == "flow_report_bad_code"
    assert _code(_mutated(service=bytes([0, 1, 2, 0]))) == "flow_report_bad_code"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_negative_or_not_finite_number_refused(value: float) -> None:
    assert _code(_mutated(orig_bytes=np.array([1.0, value, 2.0, 3.0], dtype="<f8").tobytes())) == \
        "flow_report_bad_value"


# -- streaming monitor and address inventory ----------------------------------------


def test_monitor_catches_a_scan_while_it_is_still_learning_then_scores_with_the_baselines() -> None:
    fleet = traffic.make_fleet(per_model=2, segments=2)
    monitor = FlowMonitor(MonitorConfig(learn_flows=1500, learn_s=0.0), devices={d.address: d.device_id for d in fleet},
                          models={d.device_id: d.model for d in fleet})
    benign = traffic.benign_traffic(fleet, T0, 3600.0).flows
    early = [a for b in batches(benign[:600]) for a in monitor.observe(b)]
    assert early == [] and monitor.learning
    scan = traffic.mirai_scan(fleet[0], T0 + 700.0, 60.0).flows
    alerts = [a for b in batches(scan) for a in monitor.observe(b)]
    # The window closes during the scan: from then on the learned baseline scores it too (it was not learned).
    assert {(a.device, a.detector) for a in alerts} == {(fleet[0].device_id, "scan_fanout"),
                                                        (fleet[0].device_id, "autoencoder")}
    for b in batches(benign[600:]):
        monitor.observe(b)
    assert not monitor.learning  # learned: the whole detector scores from here on
    assert monitor.detector.fitted


def test_address_inventory_parses_and_refuses_a_bad_line() -> None:
    text = b"# fleet addresses\n10.20.0.11 sim-thermo-0\n\n2001:db8::1  cam-1  # the camera\n"
    assert parse_address_inventory(text) == {"10.20.0.11": "sim-thermo-0", "2001:db8::1": "cam-1"}
    for bad in (b"10.0.0.1\n", b"10.0.0.300 dev\n", b"10.0.0.1 dev bad\n", b"10.0.0.1 a\n10.0.0.1 b\n",
                b"10.0.0.1 d\xff\n", b"10.0.0.1 -dev\n"):
        with pytest.raises(ConfigError) as info:
            parse_address_inventory(bad)
        assert info.value.code == "inventory_invalid"
