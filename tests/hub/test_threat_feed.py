"""The hub's threat feed (ADR 0716): flows to a listed address alert through the sensor path, the feed is read
again when it changes without restarting the learning, and a feed that does not parse is refused whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from iotguard.cli.main import main
from iotguard.detection import Flow, FlowBatch
from iotguard.hub.services.threat_feed import THREAT_FEED_FILE
from iotguard.sim import traffic
from tests.hub.conftest import HubParts
from tests.hub.test_sensing import _fleet, _may_publish, _report

T0 = 1_767_225_600.0
C2 = "203.0.113.66"


def _to(device: traffic.SimDevice, peer: str, ts: float) -> FlowBatch:
    return FlowBatch.from_flows([Flow(ts=ts, orig_h=device.address, orig_p=40000, resp_h=peer, resp_p=443,
                                      proto="tcp", duration=0.4, orig_bytes=300, resp_bytes=900, conn_state="SF",
                                      orig_pkts=5, resp_pkts=5)])


def _write_feed(hub: HubParts, text: str) -> Path:
    path = Path(hub.cfg.data_dir) / THREAT_FEED_FILE
    path.write_text(text)
    st = path.stat()  # a rewrite within the same clock tick still reads as a change
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    return path


def test_device_talking_to_a_listed_address_is_alerted_and_contained(hub: HubParts) -> None:
    sims = _fleet(hub)
    sensor = hub.agent("sensor-1", model="iotguard-sensor")
    _write_feed(hub, "# C2 list\n198.51.100.0/24\n" + C2 + "\n")
    _report(sensor, _to(sims[0], C2, T0))
    [alert] = hub.services.detection.alerts()
    assert (alert.alert.device, alert.alert.detector, alert.alert.severity.name) == (
        sims[0].device_id, "known_bad_address", "CRITICAL")
    assert not _may_publish(hub, sims[0].device_id)  # the default playbook contains a critical finding
    assert all(_may_publish(hub, d.device_id) for d in sims[1:])


def test_no_feed_file_no_known_bad_rule(hub: HubParts) -> None:
    sims = _fleet(hub)
    sensor = hub.agent("sensor-1", model="iotguard-sensor")
    _report(sensor, _to(sims[0], C2, T0))
    assert hub.services.detection.alerts() == []
    assert hub.services.flows.feed.status() == {"file": str(Path(hub.cfg.data_dir) / THREAT_FEED_FILE),
                                                "networks": 0, "present": False, "error": None}


def test_a_changed_feed_applies_to_the_next_report_and_the_learning_goes_on(hub: HubParts) -> None:
    sims = _fleet(hub)
    sensor = hub.agent("sensor-1", model="iotguard-sensor")
    _write_feed(hub, "192.0.2.1\n")
    _report(sensor, FlowBatch.from_flows(traffic.benign_traffic(sims, T0, 300.0).flows))
    monitor = hub.services.flows._current()
    seen = monitor.flows_seen
    _report(sensor, _to(sims[1], C2, T0 + 301.0))
    assert hub.services.detection.alerts() == []  # not listed yet
    _write_feed(hub, "192.0.2.1\n" + C2 + "\n")
    _report(sensor, _to(sims[1], C2, T0 + 302.0))
    assert [a.alert.device for a in hub.services.detection.alerts()] == [sims[1].device_id]
    assert hub.services.flows._current() is monitor and monitor.flows_seen == seen + 2  # not relearning
    (Path(hub.cfg.data_dir) / THREAT_FEED_FILE).unlink()
    _report(sensor, _to(sims[2], C2, T0 + 303.0))
    assert len(hub.services.detection.alerts()) == 1  # the file removed: no rule


def test_a_feed_that_does_not_parse_is_refused_whole_and_the_last_good_one_stays(
        hub: HubParts, caplog: pytest.LogCaptureFixture) -> None:
    sims = _fleet(hub)
    sensor = hub.agent("sensor-1", model="iotguard-sensor")
    _write_feed(hub, C2 + "\n")
    _report(sensor, _to(sims[0], "192.0.2.1", T0))
    _write_feed(hub, "192.0.2.1\nnot-an-address\n" + C2 + "\n")  # would half-load without the whole-file rule
    _report(sensor, _to(sims[0], "192.0.2.1", T0 + 1.0))
    assert hub.services.detection.alerts() == []  # 192.0.2.1 was not taken from the refused file
    assert "feed_bad_entry" in caplog.text
    status = hub.services.flows.feed.status()
    assert (status["networks"], status["error"]) == (1, "feed_bad_entry")
    _report(sensor, _to(sims[0], C2, T0 + 2.0))
    assert [a.alert.detector for a in hub.services.detection.alerts()] == ["known_bad_address"]


def test_detect_status_shows_the_feed(hub: HubParts, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_feed(hub, "198.51.100.0/24\n2001:db8::/32\n")
    conf = tmp_path / "iotguard.toml"
    conf.write_text(f'[hub]\ndata_dir = "{hub.cfg.data_dir}"\n')
    assert main(["detect", "status", "--config", str(conf), "--json"]) == 0
    out = capsys.readouterr().out
    status = json.loads(out[out.index("{"):])
    assert status["threat_feed"]["networks"] == 2 and status["threat_feed"]["error"] is None
