"""``iotguard sensor``'s log follower and sender: rotation-safe, resumable, never losing or duplicating flows."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from iotguard.detection import FlowBatch, decode_flow_report
from iotguard.detection.zeek import format_conn_log, parse_conn_log
from iotguard.errors import IotGuardError
from iotguard.sensor import FlowSender, ZeekTail, load_position, run_sensor, save_position
from iotguard.sim import traffic

T0 = 1_700_000_000.0


def _flows(n: int, start: float = T0) -> list:
    fleet = traffic.make_fleet(per_model=1, segments=1)
    return traffic.benign_traffic(fleet, start, 3600.0).flows[:n]


def _data_lines(flows: list) -> tuple[bytes, list[bytes]]:
    text = format_conn_log(flows)
    lines = text.splitlines(keepends=True)
    header = b"".join(line for line in lines if line.startswith(b"#") and not line.startswith(b"#close"))
    return header, [line for line in lines if not line.startswith(b"#")]


def _ts(batches: list[FlowBatch | None]) -> list[float]:
    return [float(t) for b in batches if b is not None for t in b.ts.tolist()]


def _want(flows: list) -> list[float]:
    """The flows' times as the log holds them (Zeek writes microseconds)."""
    return [float(t) for t in parse_conn_log(format_conn_log(flows)).flows.ts.tolist()]


def test_tail_takes_only_complete_lines(tmp_path: Path) -> None:
    flows = _flows(10)
    header, lines = _data_lines(flows)
    log = tmp_path / "conn.log"
    log.write_bytes(header + b"".join(lines[:4]) + lines[4][:10])
    tail = ZeekTail(tmp_path)
    first = tail.poll()
    assert first is not None and len(first) == 4
    assert tail.poll() is None
    with log.open("ab") as f:
        f.write(lines[4][10:] + b"".join(lines[5:]))
    second = tail.poll()
    assert _ts([first, second]) == _want(flows)


def test_rotation_loses_no_flow_and_repeats_none(tmp_path: Path) -> None:
    """Zeek renames conn.log away and starts a new one: the rest of the old file is still read."""
    flows = _flows(30)
    header, lines = _data_lines(flows)
    log = tmp_path / "conn.log"
    log.write_bytes(header + b"".join(lines[:10]))
    tail = ZeekTail(tmp_path)
    got = [tail.poll()]
    with log.open("ab") as f:
        f.write(b"".join(lines[10:20]))  # written after the last poll, before the rotation
    log.rename(tmp_path / "conn.2026-11-30-21-00-00.log")
    log.write_bytes(header + b"".join(lines[20:]))
    got.append(tail.poll())
    got.append(tail.poll())
    assert _ts(got) == _want(flows)


def test_truncated_log_is_read_again_from_its_start(tmp_path: Path) -> None:
    flows = _flows(12)
    header, lines = _data_lines(flows)
    log = tmp_path / "conn.log"
    log.write_bytes(header + b"".join(lines[:8]))
    tail = ZeekTail(tmp_path)
    assert len(tail.poll() or []) == 8
    log.write_bytes(header + b"".join(lines[8:]))  # copytruncate-style: same file, shorter
    assert _ts([tail.poll()]) == _want(flows[8:])


def test_corrupt_line_is_skipped_with_its_reason_and_the_rest_kept(tmp_path: Path) -> None:
    flows = _flows(6)
    header, lines = _data_lines(flows)
    bad = lines[2].split(b"\t")
    bad[3] = b"not-a-port"  # id.orig_p
    (tmp_path / "conn.log").write_bytes(header + b"".join(lines[:2]) + b"\t".join(bad) + b"".join(lines[3:]))
    tail = ZeekTail(tmp_path)
    got = tail.poll()
    assert _ts([got]) == _want([f for i, f in enumerate(flows) if i != 2])
    assert tail.skipped == {"zeek_bad_port": 1}


def test_json_lines_log_is_followed(tmp_path: Path) -> None:
    flows = _flows(3)
    records = [{"ts": round(f.ts, 6), "id.orig_h": f.orig_h, "id.orig_p": f.orig_p, "id.resp_h": f.resp_h,
                "id.resp_p": f.resp_p, "proto": f.proto, "conn_state": f.conn_state} for f in flows]
    (tmp_path / "conn.log").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _ts([ZeekTail(tmp_path).poll()]) == _want(flows)


class _Hub:
    """Stands in for the hub's /v1/flows: answers each report, failing the first ``fail`` calls."""

    def __init__(self, fail: int = 0, status: int = 200) -> None:
        self.fail = fail
        self.status = status
        self.received: list[FlowBatch] = []

    def __call__(self, report: bytes) -> httpx.Response:
        if self.fail:
            self.fail -= 1
            raise httpx.ConnectError("hub down")
        batch = decode_flow_report(report)
        if self.status == 200:
            self.received.append(batch)
        return httpx.Response(self.status, json={"accepted": len(batch), "alerts": 0})


def test_sender_retries_while_the_hub_is_down_then_delivers_once(tmp_path: Path) -> None:
    flows = _flows(40)
    header, lines = _data_lines(flows)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "conn.log").write_bytes(header + b"".join(lines))
    hub = _Hub(fail=2)
    sender = FlowSender(hub)
    stop = threading.Event()
    tail = ZeekTail(tmp_path / "logs")

    def stop_when_done() -> None:
        while not stop.is_set():
            if sender.sent_flows >= 40:
                stop.set()
            stop.wait(0.02)

    watcher = threading.Thread(target=stop_when_done)
    watcher.start()
    run_sensor(tail, sender, tmp_path, stop, interval_s=0.01, retry_s=0.01)
    watcher.join()
    assert _ts(list(hub.received)) == _want(flows)
    position = load_position(tmp_path)
    assert position is not None and position.offset == (tmp_path / "logs" / "conn.log").stat().st_size


def test_restart_resumes_after_the_saved_position(tmp_path: Path) -> None:
    flows = _flows(20)
    header, lines = _data_lines(flows)
    log = tmp_path / "conn.log"
    log.write_bytes(header + b"".join(lines[:12]))
    first = ZeekTail(tmp_path)
    assert len(first.poll() or []) == 12
    assert first.position is not None
    save_position(tmp_path, first.position)
    first.close()
    with log.open("ab") as f:
        f.write(b"".join(lines[12:]))
    again = ZeekTail(tmp_path, start=load_position(tmp_path))
    assert _ts([again.poll()]) == _want(flows[12:])  # header re-read, nothing sent twice


def test_report_refused_as_malformed_is_dropped_not_retried_forever() -> None:
    sender = FlowSender(_Hub(status=400))
    sender.send(FlowBatch.from_flows(_flows(5)))
    assert sender.dropped_reports == 1 and sender.sent_flows == 0
    with pytest.raises(IotGuardError) as info:
        FlowSender(_Hub(status=503)).send(FlowBatch.from_flows(_flows(5)))
    assert info.value.code == "sensor_unavailable"


def test_rotation_to_a_log_with_other_fields_parses_each_file_with_its_own_header(tmp_path: Path) -> None:
    """The new file may declare other columns (a Zeek upgrade): the old file's last lines keep the old header."""
    flows = _flows(8)
    header, lines = _data_lines(flows[:4])
    log = tmp_path / "conn.log"
    log.write_bytes(header + b"".join(lines[:2]))
    tail = ZeekTail(tmp_path)
    got = [tail.poll()]
    with log.open("ab") as f:
        f.write(b"".join(lines[2:]))
    log.rename(tmp_path / "conn.old.log")
    records = [{"ts": round(f.ts, 6), "id.orig_h": f.orig_h, "id.orig_p": f.orig_p, "id.resp_h": f.resp_h,
                "id.resp_p": f.resp_p, "proto": f.proto, "conn_state": f.conn_state} for f in flows[4:]]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))  # now JSON lines
    got.append(tail.poll())
    assert _ts(got) == _want(flows)
