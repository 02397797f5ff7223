"""The agent's health metrics from /proc: listening ports, the process set's digest, a report that encodes."""

from __future__ import annotations

import os
from pathlib import Path

from iotguard.agent.health import HealthSampler, listening_ports, process_digest
from iotguard.detection import decode_health_report, encode_health_report

_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:22B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:C350 0100007F:22B3 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 00000000:0017 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1
"""
_UDP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref
  7: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0 0
"""


def _proc(root: Path, exes: list[str]) -> Path:
    (root / "net").mkdir(parents=True)
    (root / "net" / "tcp").write_text(_TCP)
    (root / "net" / "udp").write_text(_UDP)
    (root / "self").mkdir()
    (root / "self" / "status").write_text("Name:\tagent\nVmRSS:\t  5120 kB\n")
    for pid, exe in enumerate(exes, start=100):
        (root / str(pid)).mkdir()
        os.symlink(exe, root / str(pid) / "exe")
    return root


def test_listening_ports_are_tcp_listen_and_unconnected_udp(tmp_path: Path) -> None:
    proc = _proc(tmp_path / "proc", ["/usr/bin/agent"])
    assert listening_ports(proc) == (23, 68, 8883)  # the established connection's port 50000 is not listening


def test_process_digest_changes_when_a_binary_is_dropped(tmp_path: Path) -> None:
    clean = _proc(tmp_path / "a", ["/usr/bin/agent", "/sbin/init", "/usr/bin/agent"])
    same = _proc(tmp_path / "b", ["/sbin/init", "/usr/bin/agent"])
    infected = _proc(tmp_path / "c", ["/sbin/init", "/usr/bin/agent", "/tmp/.x/mirai"])
    assert process_digest(clean) == process_digest(same)  # a set: order and duplicates do not matter
    assert process_digest(infected) != process_digest(clean)


def test_sampler_report_passes_the_hubs_strict_decoder(tmp_path: Path) -> None:
    proc = _proc(tmp_path / "proc", ["/usr/bin/agent"])
    report = HealthSampler(proc).sample(messages=12, outbound={"10.0.0.1:8883": 5300}, now=1_767_225_600)
    assert report.mem_kib == 5120 and report.listening == (23, 68, 8883) and report.messages == 12
    assert decode_health_report(encode_health_report(report)) == report
