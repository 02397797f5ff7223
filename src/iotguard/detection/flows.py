"""Network flows: one record per connection, and a columnar batch of them.

A :class:`Flow` carries the fields of a Zeek ``conn.log`` record that the
detectors use (the same fields a pcap is reduced to). Detectors work on a
:class:`FlowBatch`, the same flows as NumPy columns, so feature extraction
and scoring run vectorised over a whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotguard.errors import MalformedError

__all__ = [
    "CONN_STATES",
    "ESTABLISHED_STATES",
    "FAILED_STATE",
    "PROTOCOLS",
    "REJECTED_STATES",
    "RESET_STATE",
    "Flow",
    "FlowBatch",
    "failed_attempts",
    "proto_code",
    "state_code",
]

#: Zeek ``conn_state`` values, in code order (the code is the index).
CONN_STATES: tuple[str, ...] = (
    "S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH",
)
#: States of a connection that completed its handshake.
ESTABLISHED_STATES: frozenset[str] = frozenset({"S1", "SF", "S2", "S3"})
#: States where the responder refused or reset the connection.
REJECTED_STATES: frozenset[str] = frozenset({"REJ", "RSTR", "RSTOS0", "RSTRH", "RSTO"})
#: Transport protocols, in code order; anything else is ``other``.
PROTOCOLS: tuple[str, ...] = ("tcp", "udp", "icmp", "other")

_STATE_CODE = {s: i for i, s in enumerate(CONN_STATES)}
_PROTO_CODE = {p: i for i, p in enumerate(PROTOCOLS)}
_MAX_HOST_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Flow:
    """One connection as a flow record (Zeek ``conn.log`` semantics).

    Attributes:
        ts: Start time, POSIX seconds (UTC).
        orig_h: Originator address (for a device's own traffic, the device).
        orig_p: Originator port (0 for ICMP).
        resp_h: Responder address.
        resp_p: Responder port (ICMP: the type).
        proto: ``tcp``, ``udp``, ``icmp`` or ``other``.
        duration: Seconds from first to last packet.
        orig_bytes: Payload bytes sent by the originator.
        resp_bytes: Payload bytes sent by the responder.
        conn_state: Zeek connection state (one of :data:`CONN_STATES`).
        orig_pkts: Packets sent by the originator.
        resp_pkts: Packets sent by the responder.
        service: Application protocol Zeek identified, empty if none.
    """

    ts: float
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str
    duration: float
    orig_bytes: int
    resp_bytes: int
    conn_state: str
    orig_pkts: int
    resp_pkts: int
    service: str = ""

    def __post_init__(self) -> None:
        if self.conn_state not in _STATE_CODE:
            raise MalformedError(f"unknown conn_state {self.conn_state!r}", code="flow_bad_state")
        if self.proto not in _PROTO_CODE:
            raise MalformedError(f"unknown protocol {self.proto!r}", code="flow_bad_proto")
        if not (0 <= self.orig_p <= 65535 and 0 <= self.resp_p <= 65535):
            raise MalformedError("port outside 0..65535", code="flow_bad_port")
        if min(self.duration, self.orig_bytes, self.resp_bytes, self.orig_pkts, self.resp_pkts) < 0:
            raise MalformedError("negative duration or count", code="flow_negative")
        if not (0 < len(self.orig_h) <= _MAX_HOST_LENGTH and 0 < len(self.resp_h) <= _MAX_HOST_LENGTH):
            raise MalformedError("address empty or too long", code="flow_bad_address")


FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class FlowBatch:
    """Flows as NumPy columns (one row per flow, in the order given).

    Build one with :meth:`from_flows`; parsers may build the columns directly.
    ``state`` and ``proto`` hold the codes of :data:`CONN_STATES` and
    :data:`PROTOCOLS`; ``service_known`` is 1 where Zeek named a service.
    """

    ts: FloatArray
    orig_h: npt.NDArray[np.str_]
    resp_h: npt.NDArray[np.str_]
    orig_p: IntArray
    resp_p: IntArray
    proto: IntArray
    duration: FloatArray
    orig_bytes: FloatArray
    resp_bytes: FloatArray
    orig_pkts: FloatArray
    resp_pkts: FloatArray
    state: IntArray
    service_known: IntArray

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def from_flows(cls, flows: Sequence[Flow]) -> FlowBatch:
        """Columns of ``flows`` (validated when each :class:`Flow` was built)."""
        return cls(
            ts=np.array([f.ts for f in flows], dtype=np.float64),
            orig_h=np.array([f.orig_h for f in flows], dtype=np.str_),
            resp_h=np.array([f.resp_h for f in flows], dtype=np.str_),
            orig_p=np.array([f.orig_p for f in flows], dtype=np.int64),
            resp_p=np.array([f.resp_p for f in flows], dtype=np.int64),
            proto=np.array([_PROTO_CODE[f.proto] for f in flows], dtype=np.int64),
            duration=np.array([f.duration for f in flows], dtype=np.float64),
            orig_bytes=np.array([f.orig_bytes for f in flows], dtype=np.float64),
            resp_bytes=np.array([f.resp_bytes for f in flows], dtype=np.float64),
            orig_pkts=np.array([f.orig_pkts for f in flows], dtype=np.float64),
            resp_pkts=np.array([f.resp_pkts for f in flows], dtype=np.float64),
            state=np.array([_STATE_CODE[f.conn_state] for f in flows], dtype=np.int64),
            service_known=np.array([1 if f.service else 0 for f in flows], dtype=np.int64),
        )

    def take(self, index: npt.NDArray[np.intp] | slice) -> FlowBatch:
        """The rows at ``index`` (an index array or a slice), as a new batch."""
        return FlowBatch(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})

    def time_order(self) -> npt.NDArray[np.intp]:
        """Row indices sorted by start time (stable: ties keep input order)."""
        return np.argsort(self.ts, kind="stable")

    def flow(self, i: int) -> Flow:
        """Row ``i`` as a :class:`Flow` (for evidence and tests).

        A batch keeps only whether a service was identified, so ``service``
        is ``"?"`` where one was and empty where none was.
        """
        return Flow(
            ts=float(self.ts[i]), orig_h=str(self.orig_h[i]), orig_p=int(self.orig_p[i]),
            resp_h=str(self.resp_h[i]), resp_p=int(self.resp_p[i]), proto=PROTOCOLS[int(self.proto[i])],
            duration=float(self.duration[i]), orig_bytes=int(self.orig_bytes[i]),
            resp_bytes=int(self.resp_bytes[i]), conn_state=CONN_STATES[int(self.state[i])],
            orig_pkts=int(self.orig_pkts[i]), resp_pkts=int(self.resp_pkts[i]),
            service="?" if self.service_known[i] else "",
        )


def state_code(state: str) -> int:
    """Code of a Zeek ``conn_state`` value.

    Raises:
        MalformedError: ``flow_bad_state``.
    """
    try:
        return _STATE_CODE[state]
    except KeyError:
        raise MalformedError(f"unknown conn_state {state!r}", code="flow_bad_state") from None


def proto_code(proto: str) -> int:
    """Code of a transport protocol name (unknown names are ``other``)."""
    return _PROTO_CODE.get(proto, _PROTO_CODE["other"])


#: Per state code: Zeek's failed connection attempt (policy/misc/scan.zeek), unanswered or refused outright ...
FAILED_STATE = np.array([s in ("S0", "SH", "RSTOS0", "REJ") for s in CONN_STATES])
#: ... or reset after the handshake, failed when no payload went either way.
RESET_STATE = np.array([s in ("RSTO", "RSTR") for s in CONN_STATES])


def failed_attempts(batch: FlowBatch) -> npt.NDArray[np.bool_]:
    """Per flow: a failed connection attempt as Zeek's scan policy counts one (``policy/misc/scan.zeek``).

    Unanswered or refused outright (``S0``, ``SH``, ``RSTOS0``, ``REJ``), or
    reset after the handshake with no payload either way (``RSTO``, ``RSTR``).
    """
    failed: npt.NDArray[np.bool_] = FAILED_STATE[batch.state]
    reset = np.flatnonzero(RESET_STATE[batch.state])
    if reset.shape[0]:
        failed[reset] = (batch.orig_bytes[reset] == 0) & (batch.resp_bytes[reset] == 0)
    return failed
