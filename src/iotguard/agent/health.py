"""The agent's health metrics, read from Linux ``/proc``, for its signed ``report_health`` requests.

:class:`HealthSampler` measures what the hub's behaviour detector compares
with the device's own baseline: the agent process's CPU share and resident
memory, a digest of the set of executables running on the device (a dropped
binary changes it), the listening TCP and UDP ports (a backdoor opens one),
plus what the agent counts itself: messages published, bytes sent per
destination, failed local logins. The ``/proc`` root is a parameter so tests
give it a small tree.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

from iotguard.detection import HealthReport

__all__ = ["HealthSampler", "listening_ports", "process_digest"]

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"
_MAX_PROCESSES = 4096


def listening_ports(proc: Path = Path("/proc")) -> tuple[int, ...]:
    """Local ports in TCP LISTEN or unconnected UDP state (IPv4 and IPv6), sorted, at most 64."""
    ports: set[int] = set()
    for name, state in (("tcp", _TCP_LISTEN), ("tcp6", _TCP_LISTEN), ("udp", _UDP_UNCONNECTED),
                        ("udp6", _UDP_UNCONNECTED)):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == state and ":" in fields[1]:
                try:
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                except ValueError:
                    continue
                if 0 < port <= 65535:
                    ports.add(port)
    return tuple(sorted(ports)[:64])


def process_digest(proc: Path = Path("/proc")) -> bytes:
    """SHA-256 over the sorted, distinct executables of the processes this user may see."""
    exes: set[str] = set()
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()][:_MAX_PROCESSES]
    except OSError:
        entries = []
    for pid in entries:
        try:
            exes.add(os.readlink(proc / pid / "exe").removesuffix(" (deleted)"))
        except OSError:  # exited, a kernel thread, or not ours to read
            continue
    return hashlib.sha256("\n".join(sorted(exes)).encode()).digest()


def _rss_kib(proc: Path) -> int:
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class HealthSampler:
    """Samples health reports; CPU is the agent process's share of one core since the previous sample.

    Args:
        proc: The ``/proc`` root.
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def sample(self, *, messages: int = 0, outbound: Mapping[str, int] | None = None,
               auth_failures: int = 0, now: float | None = None) -> HealthReport:
        """A report of the metrics now; ``messages``, ``outbound`` and ``auth_failures`` count since the last."""
        cpu, wall = time.process_time(), time.monotonic()
        share = (cpu - self._cpu) / max(wall - self._wall, 1e-3)
        self._cpu, self._wall = cpu, wall
        top = sorted((outbound or {}).items(), key=lambda kv: -kv[1])[:32]
        return HealthReport(int(now if now is not None else time.time()), min(64_000, round(share * 1000)),
                            _rss_kib(self.proc), process_digest(self.proc), listening_ports(self.proc),
                            tuple(sorted((d[:80], max(0, int(b))) for d, b in top)), max(0, messages),
                            max(0, auth_failures))
