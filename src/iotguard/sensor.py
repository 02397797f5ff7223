"""``iotguard sensor``: follow a Zeek log directory (or read a pcap) and stream its flows to the hub.

:class:`ZeekTail` follows ``<directory>/conn.log`` the way ``tail -F`` does,
safely across Zeek's log rotation: when the path names a new file (the old
one renamed away), the rest of the old file is read through the descriptor
still open on it before the new one is opened; a file truncated in place is
read again from its start. Only complete lines are taken; each file's
``#`` header lines are kept to parse its data lines (TSV or JSON lines).
A line that does not parse is skipped and counted by its ``zeek_*`` reason,
so one corrupt record never stops the sensor.

:class:`FlowSender` sends flows as ``report_flows`` signed device requests
(the sensor is enrolled like a device, with the model ``iotguard-sensor``)
and :func:`run_sensor` ties both together. The sensor's position (file
identity and offset) is saved in its data directory only after the hub has
accepted the flows before it, so a restart neither loses nor re-sends
flows; a report the hub refuses as malformed is logged and dropped (it would
be refused forever), anything else is retried.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import httpx
import numpy as np

from iotguard.detection import FlowBatch, FlowReportLimits, ZeekLimits, parse_conn_log, split_for_reports
from iotguard.errors import IotGuardError, MalformedError
from iotguard.fileio import atomic_write

__all__ = ["FlowSender", "Position", "ReportSink", "ZeekTail", "run_sensor"]

log = logging.getLogger(__name__)

#: The sensor's saved position in its data directory.
POSITION_FILE = "sensor-position.json"
#: Most bytes read from the log per poll (bounds memory; the rest is read on the next poll).
MAX_READ_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Position:
    """Where in which file the sensor has consumed the log (device and inode name the file)."""

    device: int
    inode: int
    offset: int


class ZeekTail:
    """Follows ``<directory>/<name>`` across rotation and truncation.

    Args:
        directory: The Zeek log directory.
        name: The log's file name.
        start: A saved position (resume there if it names the current file).
        limits: Zeek parsing bounds.
    """

    def __init__(self, directory: Path, name: str = "conn.log", *, start: Position | None = None,
                 limits: ZeekLimits | None = None) -> None:
        self.path = directory / name
        self.limits = limits or ZeekLimits()
        self._start = start
        self._fh: IO[bytes] | None = None
        self._id: tuple[int, int] = (0, 0)
        self._offset = 0          # bytes consumed as complete lines
        self._rest = b""          # an incomplete last line
        self._header: list[bytes] = []
        #: Data lines skipped, by reason code.
        self.skipped: Counter[str] = Counter()

    @property
    def position(self) -> Position | None:
        """Position after the last line returned by :meth:`poll` (None before a file was opened)."""
        if self._fh is None:
            return None
        return Position(self._id[0], self._id[1], self._offset)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open across polls (rotation safety)
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        self.close()
        self._fh, self._id, self._offset, self._rest, self._header = fh, (st.st_dev, st.st_ino), 0, b"", []
        start, self._start = self._start, None
        if start is not None and (start.device, start.inode) == self._id and start.offset <= st.st_size:
            self._skip_to(start.offset)
        return True

    def _skip_to(self, offset: int) -> None:
        """Resume at a saved offset: re-read the header lines before it, deliver nothing before it."""
        assert self._fh is not None
        while self._offset < offset:
            line = self._fh.readline(min(self.limits.max_line_bytes + 1, offset - self._offset))
            if not line:
                break
            self._offset += len(line)
            if line.startswith(b"#"):
                self._header_line(line)

    def _header_line(self, line: bytes) -> None:
        if line.startswith(b"#separator"):
            self._header = []
        if not line.startswith(b"#close"):
            self._header.append(line)

    def _read(self) -> list[bytes]:
        assert self._fh is not None
        data = self._rest + self._fh.read(MAX_READ_BYTES)
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        if len(self._rest) > self.limits.max_line_bytes:  # a line past the limit can never parse: drop it
            self.skipped["zeek_line_too_long"] += 1
            self._offset += len(self._rest)
            self._rest = b""
        lines = data[:cut].splitlines(keepends=True)
        self._offset += cut
        out = []
        for line in lines:
            if line.startswith(b"#"):
                self._header_line(line)
            elif line.strip():
                out.append(line)
        return out

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != self._id:
            return True
        if st.st_size < self._offset + len(self._rest):  # truncated in place: read it again from the start
            self._start = None
            return True
        return False

    def poll(self) -> FlowBatch | None:
        """The flows of the complete lines written since the last poll (None if there are none)."""
        if self._fh is None and not self._open():
            return None
        lines = self._read()
        parts = []
        if self._rotated():
            lines += self._read()  # the rest of the old file, through the descriptor still open on it
            parts.append(self._parse(lines))  # with the old file's header
            self._open()
            lines = self._read()
        parts.append(self._parse(lines))
        found = [p for p in parts if p is not None]
        if len(found) <= 1:
            return found[0] if found else None
        return FlowBatch(**{name: np.concatenate([getattr(p, name) for p in found])
                            for name in FlowBatch.__dataclass_fields__})

    def _parse(self, lines: list[bytes]) -> FlowBatch | None:
        if not lines:
            return None
        header = b"" if lines[0].lstrip().startswith(b"{") else b"".join(self._header)
        try:
            return parse_conn_log(header + b"".join(lines), limits=self.limits).flows
        except MalformedError:
            pass
        parts = []
        for line in lines:  # find the bad lines; keep the rest
            try:
                parts.append(parse_conn_log(header + line, limits=self.limits).flows)
            except MalformedError as exc:
                self.skipped[exc.code] += 1
        if not parts:
            return None
        return FlowBatch(**{name: np.concatenate([getattr(p, name) for p in parts])
                            for name in FlowBatch.__dataclass_fields__})


class ReportSink(Protocol):
    """Posts one signed ``report_flows`` request and returns the HTTP answer."""

    def __call__(self, report: bytes) -> httpx.Response: ...


class FlowSender:
    """Sends flow batches as reports, within the report limits.

    Args:
        post: Posts one report (a signed request through the sensor's device identity).
        limits: Report bounds.
    """

    def __init__(self, post: ReportSink, limits: FlowReportLimits | None = None) -> None:
        self.post = post
        self.limits = limits or FlowReportLimits()
        self.sent_flows = 0
        self.dropped_reports = 0
        self.alerts = 0

    def send(self, batch: FlowBatch) -> None:
        """Send every flow of ``batch``; returns once the hub accepted (or refused as malformed) each report.

        Raises:
            IotGuardError: ``sensor_unavailable`` if the hub cannot be reached or answers otherwise
                (the caller retries the same batch later).
        """
        for report in split_for_reports(batch, self.limits):
            try:
                r = self.post(report)
            except httpx.HTTPError as exc:
                raise IotGuardError(f"hub unreachable ({type(exc).__name__})", code="sensor_unavailable") from None
            if r.status_code == 200:
                answer = r.json()
                self.sent_flows += int(answer.get("accepted", 0))
                self.alerts += int(answer.get("alerts", 0))
            elif r.status_code == 400:
                self.dropped_reports += 1
                log.error("hub refused a flow report as malformed; dropped (%s)", r.text[:200])
            else:
                raise IotGuardError(f"hub answered {r.status_code}", code="sensor_unavailable")


def load_position(data_dir: Path) -> Position | None:
    """The saved position (None if there is none or it is unreadable)."""
    try:
        raw = json.loads((data_dir / POSITION_FILE).read_text())
        return Position(int(raw["device"]), int(raw["inode"]), int(raw["offset"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_position(data_dir: Path, position: Position) -> None:
    atomic_write(data_dir / POSITION_FILE, json.dumps(
        {"device": position.device, "inode": position.inode, "offset": position.offset}).encode())


def run_sensor(tail: ZeekTail, sender: FlowSender, data_dir: Path, stop: threading.Event, *,
               interval_s: float = 0.5, retry_s: float = 2.0) -> None:
    """Poll the log, send its flows, save the position after each accepted batch, until ``stop`` is set."""
    pending: FlowBatch | None = None
    after: Position | None = None
    while not stop.is_set():
        if pending is None:
            pending = tail.poll()
            after = tail.position
        if pending is not None and len(pending):
            try:
                sender.send(pending)
            except IotGuardError as exc:
                log.warning("flows not sent (%s); retrying in %.0f s", exc, retry_s)
                stop.wait(retry_s)
                continue
        if after is not None and pending is not None:
            save_position(data_dir, after)
        if pending is None:
            stop.wait(interval_s)
        pending = None
