"""The flow monitor's per-host state and learned baselines as stored rows: exact, strict, bounded (ADR 0752)."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest

from iotguard.detection import DetectorConfig, FeatureConfig, FlowBatch, FlowMonitor, MonitorConfig
from iotguard.detection.flow_state import MAX_HOST_STATE_BYTES, MAX_STORED_PAIRS, HostStates
from iotguard.detection.model_state import INDEX_PART, export_scorer, import_scorer, model_parts
from iotguard.errors import MalformedError
from iotguard.sim import traffic

from .conftest import through_stored_rows

T0 = 1_767_225_600.0


def _batches() -> tuple[dict[str, str], list[FlowBatch]]:
    sims = traffic.make_fleet(per_model=1, segments=1)[:3]
    flows = [*traffic.benign_traffic(sims, T0, 2400.0).flows, *traffic.mirai_scan(sims[0], T0 + 2410.0, 5.0).flows,
             *traffic.cnc_beacon(sims[1], T0 + 2420.0, 600.0).flows,
             *traffic.benign_traffic(sims, T0 + 2430.0, 600.0, seed=5).flows]
    batch = FlowBatch.from_flows(flows)
    batch = batch.take(batch.time_order())
    return {d.address: d.device_id for d in sims}, [batch.take(slice(i, i + 97)) for i in range(0, len(batch), 97)]


@pytest.mark.parametrize("compiled", [False, None])
def test_batches_through_stored_host_rows_alert_exactly_as_one_detector(compiled: bool | None) -> None:
    """Resetting every host and putting back only the batch's stored rows changes nothing: features, rule
    baselines, throttles and the learned baselines' scores are those of one detector that kept everything."""
    inventory, batches = _batches()
    config = MonitorConfig(DetectorConfig(features=FeatureConfig(compiled=compiled)), learn_flows=300, learn_s=0.0)
    alerts, rows = through_stored_rows(config, inventory, batches)
    seen = {a.detector for a in alerts}
    assert {"scan_fanout", "beaconing", "autoencoder"} <= seen  # the comparison covered rules and baselines
    assert max(map(len, rows.values())) <= MAX_HOST_STATE_BYTES


def _row() -> tuple[bytes, FlowMonitor, FlowBatch]:
    inventory, batches = _batches()
    monitor = FlowMonitor(devices=inventory)
    monitor.detector.reset_hosts()
    hosts = HostStates(monitor.detector, batches[0], {})
    monitor.observe(batches[0])
    return hosts.export()[str(batches[0].orig_h[0])], monitor, batches[1]


@pytest.mark.parametrize(("change", "code"), [
    (lambda b: {**b, "extra": 1}, "detector_state_bad_keys"),
    (lambda b: {**b, "v": 3}, "detector_state_version"),
    (lambda b: {**b, "v": 1}, "detector_state_version"),  # version 1 had no country baseline
    (lambda b: {**b, "known_countries": ["DE", "AT"]}, "detector_state_bad_value"),
    (lambda b: {**b, "known_countries": ["de"]}, "detector_state_bad_value"),
    (lambda b: {**b, "country_flows": -1}, "detector_state_bad_value"),
    (lambda b: {**b, "sums": b["sums"][:-8]}, "detector_state_bad_value"),
    (lambda b: {**b, "times": np.array([np.nan, 0, 0, 0]).tobytes()}, "detector_state_bad_value"),
    (lambda b: {**b, "dsts": b["dsts"] + b["dsts"][:1]}, "detector_state_bad_value"),
    (lambda b: {**b, "known_ports": [1 << 20]}, "detector_state_bad_value"),
    (lambda b: {**b, "alerted": {"not_a_detector": 1.0}}, "detector_state_bad_value"),
    (lambda b: {**b, "excluded": 1}, "detector_state_bad_value"),
    (lambda b: {**b, "dsts": ["x"] * (MAX_STORED_PAIRS + 1)}, "detector_state_bad_value"),
])
def test_malformed_host_row_is_refused_and_the_host_starts_afresh(change: object, code: str) -> None:
    data, monitor, batch = _row()
    host = str(batch.orig_h[0])
    tampered = bytes(cbor2.dumps(change(cbor2.loads(data)), canonical=True))  # type: ignore[operator]
    monitor.detector.reset_hosts()
    hosts = HostStates(monitor.detector, batch, {host: tampered})
    assert hosts.unreadable == {host: code}


def test_a_version_1_row_is_read_with_an_empty_country_baseline() -> None:
    """Rows stored before the new-country baseline (session 16) keep every other part of the host's state."""
    data, monitor, batch = _row()
    host = str(batch.orig_h[0])
    body = cbor2.loads(data)
    del body["known_countries"], body["country_flows"]
    old = bytes(cbor2.dumps({**body, "v": 1}, canonical=True))
    monitor.detector.reset_hosts()
    hosts = HostStates(monitor.detector, batch, {host: old})
    assert hosts.unreadable == {}
    again = cbor2.loads(hosts.export()[host])
    assert again["v"] == 2 and again["known_countries"] == [] and again["country_flows"] == 0
    assert again["known_ports"] == body["known_ports"] and again["sums"] == body["sums"]


def test_oversized_or_non_canonical_host_row_is_refused_before_parsing() -> None:
    data, monitor, batch = _row()
    host = str(batch.orig_h[0])
    for bad, code in ((b"\x00" * (MAX_HOST_STATE_BYTES + 1), "detector_state_too_large"),
                      (cbor2.dumps(dict(reversed(cbor2.loads(data).items()))), "detector_state_not_canonical"),
                      (b"\xff\x00", "detector_state_not_cbor")):
        monitor.detector.reset_hosts()
        assert HostStates(monitor.detector, batch, {host: bad}).unreadable == {host: code}


def test_learned_baseline_round_trips_exactly_and_refuses_tampering() -> None:
    inventory, batches = _batches()
    monitor = FlowMonitor(MonitorConfig(learn_flows=300, learn_s=0.0), devices=inventory)
    for batch in batches[:6]:
        monitor.observe(batch)
    assert not monitor.learning
    parts = export_scorer(monitor.detector.scorer)
    assert set(parts) == {INDEX_PART, *model_parts(parts[INDEX_PART])}
    copy = import_scorer(monitor.config.detector.scorer, parts)
    x = monitor.detector.extractor.transform(batches[7]).values
    device, model = monitor.detector._device(batches[7].orig_h)
    assert np.array_equal(copy.score(x, device, model), monitor.detector.scorer.score(x, device, model))
    assert export_scorer(copy) == parts

    part = next(p for p in parts if p != INDEX_PART)
    body = cbor2.loads(parts[part])
    for change in ({"w1": body["w1"][:-8]}, {"subsets": body["subsets"][1:]}, {"threshold": -1.0},
                   {"span": np.zeros(len(body["span"]) // 8).tobytes()}, {"held_out": body["held_out"][::-1]}):
        tampered = {**parts, part: bytes(cbor2.dumps({**body, **change}, canonical=True))}
        with pytest.raises(MalformedError) as err:
            import_scorer(monitor.config.detector.scorer, tampered)
        assert err.value.code == "detector_state_bad_value"
    with pytest.raises(MalformedError) as err:
        import_scorer(monitor.config.detector.scorer, {INDEX_PART: parts[INDEX_PART]})
    assert err.value.code == "detector_state_missing"


def test_scanning_host_row_stays_bounded() -> None:
    """A host scanning 1,200 addresses keeps its 512 most recently used channels and ports in its row."""
    sims = traffic.make_fleet(per_model=1, segments=1)[:1]
    scan = FlowBatch.from_flows(traffic.mirai_scan(sims[0], T0, 40.0, rate=30.0).flows)
    monitor = FlowMonitor()
    rows: dict[str, bytes] = {}
    for part in [scan.take(slice(i, i + 400)) for i in range(0, len(scan), 400)]:
        monitor.detector.reset_hosts()
        hosts = HostStates(monitor.detector, part, rows)
        monitor.observe(part)
        rows.update(hosts.export())
    body = cbor2.loads(rows[sims[0].address])
    assert len(scan) > 1000 and len(body["dsts"]) == MAX_STORED_PAIRS
    assert len(rows[sims[0].address]) <= MAX_HOST_STATE_BYTES
    last_used = np.frombuffer(body["channels"], dtype="<f8").reshape(-1, 6)[:, 0]
    assert last_used.min() >= np.sort(scan.ts)[-MAX_STORED_PAIRS]  # the newest destinations were kept
