"""Strict reader of Zeek ``conn.log`` files: TSV (with ``#fields``/``#types``
headers) and JSON lines, including the labeled IoT-23 variant.

IoT-23 and the Stratosphere captures append label columns (``label``,
``detailed-label``) to the TSV; in some published files the last header
fields, and the last values of each line, are separated by runs of spaces
instead of tabs. The reader accepts both: a header token holding spaces is
split into field names (Zeek field names never contain spaces), and a data
line with too few tab-separated values has its last value split on spaces,
which must then give exactly the declared number of values.

Everything is bounded (:class:`ZeekLimits`) and every rejection is a
:class:`~iotguard.errors.MalformedError` with a ``zeek_*`` reason code and
the line number. The reader takes bytes, never a path: reading the file is
the caller's business.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from iotguard.detection.flows import Flow, FlowBatch, proto_code, state_code
from iotguard.errors import MalformedError

__all__ = ["ConnLog", "ZeekLimits", "format_conn_log", "parse_conn_log"]

_REQUIRED = ("ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto")
_COUNTS = ("orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts")
_MAX_COUNT = 2**53
_MAX_LABEL = 128


@dataclass(frozen=True)
class ZeekLimits:
    """Size limits of one ``conn.log``.

    Attributes:
        max_bytes: Whole input.
        max_line_bytes: One line (header or record).
        max_records: Flow records.
        max_fields: Declared fields.
    """

    max_bytes: int = 512 * 1024 * 1024
    max_line_bytes: int = 16 * 1024
    max_records: int = 5_000_000
    max_fields: int = 64


@dataclass(frozen=True)
class ConnLog:
    """A parsed ``conn.log``.

    Attributes:
        flows: The records, in file order.
        labels: Values of the label column (if one was asked for), one per flow.
        format: ``tsv`` or ``json``.
        local_hosts: Addresses Zeek marked local (``local_orig`` or ``local_resp`` true: inside its
            ``Site::local_nets``), the capture's own site; empty when the log lacks both fields.
    """

    flows: FlowBatch
    labels: npt.NDArray[np.str_] | None
    format: str
    local_hosts: frozenset[str] = frozenset()


def _fail(line_no: int, code: str, what: str) -> MalformedError:
    return MalformedError(f"conn.log line {line_no}: {what}", code=code)


class _Columns:
    """Column lists that become a :class:`FlowBatch`."""

    def __init__(self, label_column: str | None) -> None:
        self.label_column = label_column
        self.ts: list[float] = []
        self.orig_h: list[str] = []
        self.resp_h: list[str] = []
        self.orig_p: list[int] = []
        self.resp_p: list[int] = []
        self.proto: list[int] = []
        self.duration: list[float] = []
        self.counts: dict[str, list[int]] = {name: [] for name in _COUNTS}
        self.state: list[int] = []
        self.service: list[int] = []
        self.labels: list[str] = []
        self.local: set[str] = set()

    def add(self, rec: dict[str, object], line_no: int) -> None:
        for name in _REQUIRED:
            if rec.get(name) in (None, "-", ""):
                raise _fail(line_no, "zeek_missing_field", f"field {name} missing or unset")
        self.ts.append(_time(rec["ts"], line_no))
        self.orig_h.append(_addr(rec["id.orig_h"], line_no))
        self.resp_h.append(_addr(rec["id.resp_h"], line_no))
        self.orig_p.append(_port(rec["id.orig_p"], line_no))
        self.resp_p.append(_port(rec["id.resp_p"], line_no))
        self.proto.append(proto_code(str(rec["proto"])))
        self.duration.append(_interval(rec.get("duration"), line_no))
        for name in _COUNTS:
            self.counts[name].append(_count(rec.get(name), name, line_no))
        state = rec.get("conn_state")
        try:
            self.state.append(state_code("OTH" if state in (None, "-") else str(state)))
        except MalformedError:
            raise _fail(line_no, "zeek_bad_state", f"unknown conn_state {str(state)[:16]!r}") from None
        # Zeek's own judgement of which end is inside the site (its Site::local_nets).
        if rec.get("local_orig") in ("T", True):
            self.local.add(self.orig_h[-1])
        if rec.get("local_resp") in ("T", True):
            self.local.add(self.resp_h[-1])
        service = rec.get("service")
        self.service.append(0 if service in (None, "-", "", "(empty)") else 1)
        if self.label_column is not None:
            label = rec.get(self.label_column)
            if not isinstance(label, str) or not label or len(label) > _MAX_LABEL:
                raise _fail(line_no, "zeek_bad_label", f"label column {self.label_column!r} missing or invalid")
            self.labels.append(label)

    def batch(self) -> FlowBatch:
        return FlowBatch(
            ts=np.array(self.ts, dtype=np.float64),
            orig_h=np.array(self.orig_h, dtype=np.str_),
            resp_h=np.array(self.resp_h, dtype=np.str_),
            orig_p=np.array(self.orig_p, dtype=np.int64),
            resp_p=np.array(self.resp_p, dtype=np.int64),
            proto=np.array(self.proto, dtype=np.int64),
            duration=np.array(self.duration, dtype=np.float64),
            orig_bytes=np.array(self.counts["orig_bytes"], dtype=np.float64),
            resp_bytes=np.array(self.counts["resp_bytes"], dtype=np.float64),
            orig_pkts=np.array(self.counts["orig_pkts"], dtype=np.float64),
            resp_pkts=np.array(self.counts["resp_pkts"], dtype=np.float64),
            state=np.array(self.state, dtype=np.int64),
            service_known=np.array(self.service, dtype=np.int64),
        )


def _time(value: object, line_no: int) -> float:
    if isinstance(value, str) and "T" in value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _fail(line_no, "zeek_bad_time", "ts is not a time") from None
        if parsed.tzinfo is None:
            raise _fail(line_no, "zeek_bad_time", "ISO 8601 ts without a time zone")
        return parsed.timestamp()
    ts = _float(value, line_no, "zeek_bad_time", "ts")
    if ts < 0:
        raise _fail(line_no, "zeek_bad_time", "negative ts")
    return ts


def _float(value: object, line_no: int, code: str, name: str) -> float:
    if isinstance(value, bool):
        raise _fail(line_no, code, f"{name} is not a number")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _fail(line_no, code, f"{name} is not a number") from None
    if not math.isfinite(x):
        raise _fail(line_no, code, f"{name} is not finite")
    return x


def _interval(value: object, line_no: int) -> float:
    if value in (None, "-"):
        return 0.0
    x = _float(value, line_no, "zeek_bad_interval", "duration")
    if x < 0:
        raise _fail(line_no, "zeek_bad_interval", "negative duration")
    return x


def _int(value: object, line_no: int, code: str, name: str, upper: int) -> int:
    if isinstance(value, bool):
        raise _fail(line_no, code, f"{name} is not an integer")
    if isinstance(value, int):
        x = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        x = int(value)
    else:
        raise _fail(line_no, code, f"{name} is not an integer")
    if not 0 <= x <= upper:
        raise _fail(line_no, code, f"{name} out of range")
    return x


def _port(value: object, line_no: int) -> int:
    return _int(value, line_no, "zeek_bad_port", "port", 65535)


def _count(value: object, name: str, line_no: int) -> int:
    if value in (None, "-"):
        return 0
    return _int(value, line_no, "zeek_bad_count", name, _MAX_COUNT)


def _addr(value: object, line_no: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isascii() or not value.isprintable():
        raise _fail(line_no, "zeek_bad_address", "address empty, too long or not printable ASCII")
    return value


def _lines(data: bytes, limits: ZeekLimits) -> Iterable[tuple[int, str]]:
    if len(data) > limits.max_bytes:
        raise MalformedError(f"conn.log larger than {limits.max_bytes} bytes", code="zeek_too_large")
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if len(raw) > limits.max_line_bytes:
            raise _fail(line_no, "zeek_line_too_long", f"longer than {limits.max_line_bytes} bytes")
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise _fail(line_no, "zeek_not_utf8", "not UTF-8") from None
        if line.strip():
            yield line_no, line


def _parse_tsv(lines: Iterable[tuple[int, str]], cols: _Columns, limits: ZeekLimits) -> None:
    sep = "\t"
    fields: list[str] | None = None
    records = 0
    for line_no, line in lines:
        if line.startswith("#"):
            if line.startswith("#separator "):
                value = line[len("#separator "):].strip()
                if value != "\\x09":
                    raise _fail(line_no, "zeek_bad_header", "only the tab separator is supported")
                continue
            key, _, rest = line.partition(sep)
            if key == "#path" and rest.strip() != "conn":
                raise _fail(line_no, "zeek_not_conn_log", f"#path is {rest.strip()[:32]!r}, not conn")
            if key == "#fields":
                fields = [name for token in rest.split(sep) for name in token.split()]
                if not 0 < len(fields) <= limits.max_fields or len(set(fields)) != len(fields):
                    raise _fail(line_no, "zeek_bad_header", "#fields empty, too many or repeated")
                missing = [name for name in _REQUIRED if name not in fields]
                if missing:
                    raise _fail(line_no, "zeek_bad_header", f"#fields lacks {', '.join(missing)}")
                if cols.label_column is not None and cols.label_column not in fields:
                    raise _fail(line_no, "zeek_no_label_column", f"no column named {cols.label_column!r}")
            continue
        if fields is None:
            raise _fail(line_no, "zeek_no_header", "record before the #fields header")
        values = line.split(sep)
        if len(values) < len(fields):
            values = values[:-1] + values[-1].split()
        if len(values) != len(fields):
            raise _fail(line_no, "zeek_field_count", f"{len(values)} values for {len(fields)} fields")
        records += 1
        if records > limits.max_records:
            raise _fail(line_no, "zeek_too_many_records", f"more than {limits.max_records} records")
        cols.add(dict(zip(fields, values, strict=True)), line_no)
    if fields is None:
        raise MalformedError("conn.log has no #fields header", code="zeek_no_header")


def _parse_json(lines: Iterable[tuple[int, str]], cols: _Columns, limits: ZeekLimits) -> None:
    for records, (line_no, line) in enumerate(lines, start=1):
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            raise _fail(line_no, "zeek_bad_json", "not a JSON object") from None
        if not isinstance(rec, dict):
            raise _fail(line_no, "zeek_bad_json", "not a JSON object")
        if len(rec) > limits.max_fields:
            raise _fail(line_no, "zeek_bad_json", "too many fields")
        if records > limits.max_records:
            raise _fail(line_no, "zeek_too_many_records", f"more than {limits.max_records} records")
        cols.add(rec, line_no)


def parse_conn_log(data: bytes, *, label_column: str | None = None, limits: ZeekLimits | None = None) -> ConnLog:
    """Parse a Zeek ``conn.log`` (TSV or JSON lines, detected from the first line).

    Args:
        data: The whole log.
        label_column: Name of a label column to return (``label`` for IoT-23);
            every record must then carry a non-empty value.
        limits: Size limits (defaults: :class:`ZeekLimits`).

    Raises:
        MalformedError: A ``zeek_*`` reason code naming what was wrong and where.
    """
    limits = limits or ZeekLimits()
    cols = _Columns(label_column)
    lines = iter(_lines(data, limits))
    first = next(lines, None)
    if first is None:
        raise MalformedError("conn.log is empty", code="zeek_empty")
    chained = _chain(first, lines)
    if first[1].lstrip().startswith("{"):
        _parse_json(chained, cols, limits)
        fmt = "json"
    else:
        _parse_tsv(chained, cols, limits)
        fmt = "tsv"
    labels = np.array(cols.labels, dtype=np.str_) if label_column is not None else None
    return ConnLog(flows=cols.batch(), labels=labels, format=fmt, local_hosts=frozenset(cols.local))


def _chain(first: tuple[int, str], rest: Iterable[tuple[int, str]]) -> Iterable[tuple[int, str]]:
    yield first
    yield from rest


_TSV_FIELDS = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration",
               "orig_bytes", "resp_bytes", "conn_state", "orig_pkts", "resp_pkts")
_TSV_TYPES = ("time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count", "count",
              "string", "count", "count")


def format_conn_log(flows: Iterable[Flow], labels: Iterable[str] | None = None) -> bytes:
    """Write flows as a Zeek TSV ``conn.log`` (with a ``label`` column if ``labels`` is given)."""
    fields, types = list(_TSV_FIELDS), list(_TSV_TYPES)
    if labels is not None:
        fields.append("label")
        types.append("string")
    lines = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-", "#path\tconn",
             "#fields\t" + "\t".join(fields), "#types\t" + "\t".join(types)]
    label_iter = iter(labels) if labels is not None else None
    for i, f in enumerate(flows):
        row = [f"{f.ts:.6f}", f"C{i:017d}", f.orig_h, str(f.orig_p), f.resp_h, str(f.resp_p), f.proto,
               f.service or "-", f"{f.duration:.6f}", str(f.orig_bytes), str(f.resp_bytes), f.conn_state,
               str(f.orig_pkts), str(f.resp_pkts)]
        if label_iter is not None:
            row.append(next(label_iter))
        lines.append("\t".join(row))
    return ("\n".join(lines) + "\n").encode()
