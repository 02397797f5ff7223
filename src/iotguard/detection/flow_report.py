"""The flow report a sensor sends to the hub: a batch of flows, columnar, strictly decoded.

A sensor (``iotguard sensor``) reduces Zeek logs or pcaps to
:class:`~iotguard.detection.flows.FlowBatch` columns and sends them in the
body of a signed ``report_flows`` device request. The report is one
canonical CBOR map ::

    {"v": 1, "n": 3, "hosts": ["10.0.1.5", "10.0.0.1", ...],
     "orig": h'...', "resp": h'...',           # uint16 little-endian indices into hosts
     "ts": h'...', "duration": h'...',         # float64 little-endian
     "orig_bytes": h'...', "resp_bytes": h'...', "orig_pkts": h'...', "resp_pkts": h'...',
     "orig_p": h'...', "resp_p": h'...',       # uint16 little-endian
     "proto": h'...', "state": h'...', "service": h'...'}   # uint8

so a report of 800 flows is about 50 kB and decodes with NumPy, without a
Python object per flow. :func:`decode_flow_report` checks the size before
parsing, the exact key set, every column's exact length, every code and
index against its table, and that every number is finite and not negative;
each refusal is a :class:`~iotguard.errors.MalformedError` with one
``flow_report_*`` reason code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import cbor2
import numpy as np
import numpy.typing as npt

from iotguard.detection._cbor import decode_canonical_map
from iotguard.detection.flows import CONN_STATES, PROTOCOLS, FlowBatch
from iotguard.errors import MalformedError

__all__ = ["FlowReportLimits", "decode_flow_report", "encode_flow_report", "split_for_reports"]

VERSION: Final = 1
_MAX_HOST_LENGTH: Final = 64
_FLOAT_COLUMNS: Final = ("ts", "duration", "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts")
_PORT_COLUMNS: Final = ("orig_p", "resp_p")
_CODE_COLUMNS: Final = (("proto", len(PROTOCOLS)), ("state", len(CONN_STATES)), ("service", 2))
_KEYS: Final = frozenset({"v", "n", "hosts", "orig", "resp", *_FLOAT_COLUMNS, *_PORT_COLUMNS,
                          *(c for c, _ in _CODE_COLUMNS)})


@dataclass(frozen=True)
class FlowReportLimits:
    """Named bounds of a flow report.

    Attributes:
        max_flows: Flows in one report (a sensor splits larger batches).
        max_bytes: Encoded report size (it travels inside a signed request).
    """

    max_flows: int = 800
    max_bytes: int = 60_000

    def __post_init__(self) -> None:
        if not 1 <= self.max_flows <= 10_000 or not 1024 <= self.max_bytes <= 1_000_000:
            raise ValueError("flow report limits out of range")


def _fail(code: str, what: str) -> MalformedError:
    return MalformedError(f"flow report: {what}", code=f"flow_report_{code}")


def encode_flow_report(batch: FlowBatch) -> bytes:
    """Canonical CBOR of a flow batch (the sensor's side).

    Raises:
        MalformedError: ``flow_report_bad_value`` (a negative or not finite number, a port out of range).
    """
    if not all(np.isfinite(getattr(batch, c)).all() and (getattr(batch, c) >= 0).all() for c in _FLOAT_COLUMNS):
        raise _fail("bad_value", "numbers must be finite and not negative")
    if ((batch.orig_p < 0) | (batch.orig_p > 65535) | (batch.resp_p < 0) | (batch.resp_p > 65535)).any():
        raise _fail("bad_value", "port outside 0..65535")
    hosts, index = np.unique(np.concatenate([batch.orig_h, batch.resp_h]), return_inverse=True)
    n = len(batch)
    body: dict[str, Any] = {
        "v": VERSION, "n": n, "hosts": [str(h) for h in hosts.tolist()],
        "orig": index[:n].astype("<u2").tobytes(), "resp": index[n:].astype("<u2").tobytes(),
        "proto": batch.proto.astype("u1").tobytes(), "state": batch.state.astype("u1").tobytes(),
        "service": batch.service_known.astype("u1").tobytes(),
    }
    for c in _FLOAT_COLUMNS:
        body[c] = getattr(batch, c).astype("<f8").tobytes()
    for c in _PORT_COLUMNS:
        body[c] = getattr(batch, c).astype("<u2").tobytes()
    return bytes(cbor2.dumps(body, canonical=True))


def split_for_reports(batch: FlowBatch, limits: FlowReportLimits | None = None) -> list[bytes]:
    """Encode ``batch`` as reports within the limits (the sensor's side), halving a part that is too big."""
    limits = limits or FlowReportLimits()
    out: list[bytes] = []
    pending = [batch.take(slice(i, i + limits.max_flows)) for i in range(0, len(batch), limits.max_flows)]
    while pending:
        part = pending.pop(0)
        encoded = encode_flow_report(part)
        if len(encoded) <= limits.max_bytes:
            out.append(encoded)
        elif len(part) == 1:
            raise _fail("too_large", "one flow does not fit in a report")
        else:
            half = len(part) // 2
            pending[:0] = [part.take(slice(0, half)), part.take(slice(half, None))]
    return out


def _column(body: dict[str, Any], name: str, dtype: str, n: int) -> npt.NDArray[Any]:
    raw = body[name]
    if not isinstance(raw, bytes) or len(raw) != n * np.dtype(dtype).itemsize:
        raise _fail("bad_column", f"column {name!r} is not {n} values of {dtype}")
    return np.frombuffer(raw, dtype=dtype)


def decode_flow_report(data: bytes, limits: FlowReportLimits | None = None) -> FlowBatch:
    """Decode a flow report strictly (the hub's side).

    Raises:
        MalformedError: ``flow_report_too_large``, ``flow_report_not_cbor``,
            ``flow_report_not_canonical``, ``flow_report_bad_keys``,
            ``flow_report_version``, ``flow_report_too_many``,
            ``flow_report_bad_hosts``, ``flow_report_bad_column``,
            ``flow_report_bad_index``, ``flow_report_bad_code`` or
            ``flow_report_bad_value``.
    """
    limits = limits or FlowReportLimits()
    body = decode_canonical_map(data, max_bytes=limits.max_bytes, keys=_KEYS, version=VERSION,
                                prefix="flow_report", what="flow report")
    n = body["n"]
    if type(n) is not int or not 1 <= n <= limits.max_flows:
        raise _fail("too_many", f"flow count must lie in 1..{limits.max_flows}")
    hosts = body["hosts"]
    if not isinstance(hosts, list) or not 1 <= len(hosts) <= 2 * n or \
            not all(isinstance(h, str) and 0 < len(h) <= _MAX_HOST_LENGTH and h.isprintable() and " " not in h
                    for h in hosts) or len(set(hosts)) != len(hosts):
        raise _fail("bad_hosts", "host table must be distinct printable addresses of 1-64 characters")
    orig = _column(body, "orig", "<u2", n)
    resp = _column(body, "resp", "<u2", n)
    if int(max(orig.max(), resp.max())) >= len(hosts):
        raise _fail("bad_index", "host index outside the host table")
    floats = {c: _column(body, c, "<f8", n).astype(np.float64) for c in _FLOAT_COLUMNS}
    if not all(np.isfinite(v).all() and (v >= 0).all() for v in floats.values()):
        raise _fail("bad_value", "numbers must be finite and not negative")
    codes = {}
    for c, size in _CODE_COLUMNS:
        codes[c] = _column(body, c, "u1", n).astype(np.int64)
        if int(codes[c].max()) >= size:
            raise _fail("bad_code", f"column {c!r} holds an unknown code")
    table = np.array(hosts, dtype=np.str_)
    return FlowBatch(
        ts=floats["ts"], orig_h=table[orig], resp_h=table[resp],
        orig_p=_column(body, "orig_p", "<u2", n).astype(np.int64),
        resp_p=_column(body, "resp_p", "<u2", n).astype(np.int64),
        proto=codes["proto"], duration=floats["duration"], orig_bytes=floats["orig_bytes"],
        resp_bytes=floats["resp_bytes"], orig_pkts=floats["orig_pkts"], resp_pkts=floats["resp_pkts"],
        state=codes["state"], service_known=codes["service"])
