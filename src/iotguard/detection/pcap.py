"""pcap / pcapng -> flows, with dpkt.

Packets are grouped into connections by 5-tuple; the originator is the
sender of the first packet seen (for TCP, the sender of the SYN). Each
connection becomes a :class:`~iotguard.detection.flows.Flow` with Zeek's
meaning of the fields: payload bytes and packets each way, duration, and a
``conn_state`` derived from the TCP flags seen (``S0``, ``REJ``, ``S1``,
``SF``, ``RSTO``, ``RSTR``, ``RSTOS0``, ``SH``, ``OTH``; UDP and ICMP are
``SF`` when both sides spoke, else ``S0``). A connection idle for longer
than its protocol's timeout ends and a later packet starts a new one.

Limits bound the input, the packets and the connections held at once.
A packet that does not parse is skipped and counted by reason (captures
are full of truncated frames); a file that is not a capture is rejected.
"""

from __future__ import annotations

import io
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

import dpkt

from iotguard.detection.flows import Flow
from iotguard.errors import MalformedError

__all__ = ["PcapLimits", "PcapResult", "flows_from_pcap"]

_TIMEOUT = {"tcp": 300.0, "udp": 60.0, "icmp": 60.0}
_LINK_ETHERNET = 1
_LINK_RAW = (101, 12, 14)
_LINK_SLL = 113


@dataclass(frozen=True)
class PcapLimits:
    """Size limits of one capture."""

    max_bytes: int = 1024 * 1024 * 1024
    max_packets: int = 20_000_000
    max_open_connections: int = 200_000


@dataclass
class _Conn:
    ts: float
    last: float
    orig: tuple[str, int]
    resp: tuple[str, int]
    proto: str
    orig_bytes: int = 0
    resp_bytes: int = 0
    orig_pkts: int = 0
    resp_pkts: int = 0
    flags: set[str] = field(default_factory=set)

    def state(self) -> str:
        f = self.flags
        if self.proto != "tcp":
            return "SF" if self.resp_pkts else "S0"
        if "syn_o" not in f:
            return "OTH"
        if "synack_r" not in f:
            if "rst_r" in f:
                return "REJ"
            if "rst_o" in f:
                return "RSTOS0"
            if "fin_o" in f:
                return "SH"
            return "S0"
        if "rst_o" in f:
            return "RSTO"
        if "rst_r" in f:
            return "RSTR"
        if "fin_o" in f or "fin_r" in f:
            return "SF"
        return "S1"

    def flow(self) -> Flow:
        return Flow(ts=self.ts, orig_h=self.orig[0], orig_p=self.orig[1], resp_h=self.resp[0], resp_p=self.resp[1],
                    proto=self.proto, duration=max(self.last - self.ts, 0.0), orig_bytes=self.orig_bytes,
                    resp_bytes=self.resp_bytes, conn_state=self.state(), orig_pkts=self.orig_pkts,
                    resp_pkts=self.resp_pkts)


@dataclass(frozen=True)
class PcapResult:
    """Flows of a capture (by start time) and the packets skipped, by reason."""

    flows: list[Flow]
    packets: int
    skipped: Counter[str]


#: What dpkt raises on hostile bytes besides its own errors. Its decoders are not
#: ours and not strict: an IPv6 fragment header followed by an AH header makes
#: ``IP6.unpack`` raise ``AttributeError`` (fuzzing finding, docs/reliability.md),
#: so any of these from dpkt is a bad packet, never a crashed import.
_DPKT_FAILURES = (dpkt.dpkt.Error, ValueError, IndexError, AttributeError, KeyError, TypeError, struct.error)


def _reader(data: bytes) -> dpkt.pcap.Reader | dpkt.pcapng.Reader:
    for cls in (dpkt.pcap.Reader, dpkt.pcapng.Reader):
        try:
            return cls(io.BytesIO(data))
        except (ValueError, dpkt.dpkt.Error, dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, EOFError):
            continue
    raise MalformedError("not a pcap or pcapng capture", code="pcap_bad_header")


def _ip_layer(buf: bytes, linktype: int) -> object:
    if linktype == _LINK_ETHERNET:
        return dpkt.ethernet.Ethernet(buf).data
    if linktype == _LINK_SLL:
        return dpkt.sll.SLL(buf).data
    if linktype in _LINK_RAW:
        return dpkt.ip6.IP6(buf) if buf[:1] and buf[0] >> 4 == 6 else dpkt.ip.IP(buf)
    raise MalformedError(f"unsupported link type {linktype}", code="pcap_bad_linktype")


def _packet(ip: object) -> tuple[str, str, str, int, int, int, int] | None:
    """(proto, src, dst, sport, dport, payload length, tcp flags) or ``None`` if not IP."""
    if isinstance(ip, dpkt.ip.IP):
        src, dst = socket.inet_ntop(socket.AF_INET, ip.src), socket.inet_ntop(socket.AF_INET, ip.dst)
    elif isinstance(ip, dpkt.ip6.IP6):
        src, dst = socket.inet_ntop(socket.AF_INET6, ip.src), socket.inet_ntop(socket.AF_INET6, ip.dst)
    else:
        return None
    l4 = ip.data
    if isinstance(l4, dpkt.tcp.TCP):
        return "tcp", src, dst, l4.sport, l4.dport, len(l4.data), l4.flags
    if isinstance(l4, dpkt.udp.UDP):
        return "udp", src, dst, l4.sport, l4.dport, len(l4.data), 0
    if isinstance(l4, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
        return "icmp", src, dst, 0, l4.type, len(bytes(l4.data)), 0
    return "other", src, dst, 0, 0, len(bytes(l4)) if isinstance(l4, bytes | dpkt.Packet) else 0, 0


def flows_from_pcap(data: bytes, limits: PcapLimits | None = None) -> PcapResult:
    """Turn a capture's bytes into flows.

    Raises:
        MalformedError: ``pcap_too_large``, ``pcap_bad_header``, ``pcap_bad_linktype``,
            ``pcap_too_many_packets`` or ``pcap_too_many_connections``.
    """
    limits = limits or PcapLimits()
    if len(data) > limits.max_bytes:
        raise MalformedError(f"capture larger than {limits.max_bytes} bytes", code="pcap_too_large")
    reader = _reader(data)
    linktype = reader.datalink()
    open_conns: dict[tuple[str, str, int, str, int], _Conn] = {}
    done: list[Flow] = []
    skipped: Counter[str] = Counter()
    packets = 0
    try:
        for ts, buf in reader:
            packets += 1
            if packets > limits.max_packets:
                raise MalformedError(f"more than {limits.max_packets} packets", code="pcap_too_many_packets")
            try:
                parsed = _packet(_ip_layer(buf, linktype))
            except _DPKT_FAILURES:
                skipped["pcap_bad_packet"] += 1
                continue
            if parsed is None:
                skipped["pcap_not_ip"] += 1
                continue
            _account(open_conns, done, float(ts), parsed, limits)
    except _DPKT_FAILURES:
        skipped["pcap_truncated"] += 1
    done.extend(c.flow() for c in open_conns.values())
    done.sort(key=lambda f: f.ts)
    return PcapResult(done, packets, skipped)


def _account(open_conns: dict[tuple[str, str, int, str, int], _Conn], done: list[Flow], ts: float,
             parsed: tuple[str, str, str, int, int, int, int], limits: PcapLimits) -> None:
    proto, src, dst, sport, dport, size, flags = parsed
    fwd = (proto, src, sport, dst, dport)
    rev = (proto, dst, dport, src, sport)
    conn = open_conns.get(fwd)
    key = fwd
    if conn is None:
        conn = open_conns.get(rev)
        key = rev
    timeout = _TIMEOUT.get(proto, 60.0)
    if conn is not None and ts - conn.last > timeout:
        done.append(conn.flow())
        del open_conns[key]
        conn = None
    if conn is None:
        if len(open_conns) >= limits.max_open_connections:
            raise MalformedError("too many simultaneous connections", code="pcap_too_many_connections")
        key = fwd
        # A SYN-ACK first means we missed the SYN: the sender is the responder.
        syn, ack = bool(flags & dpkt.tcp.TH_SYN), bool(flags & dpkt.tcp.TH_ACK)
        if proto == "tcp" and syn and ack:
            key = rev
            conn = _Conn(ts, ts, (dst, dport), (src, sport), proto)
        else:
            conn = _Conn(ts, ts, (src, sport), (dst, dport), proto)
        open_conns[key] = conn
    from_orig = (src, sport) == conn.orig
    conn.last = max(conn.last, ts)
    side = "o" if from_orig else "r"
    if from_orig:
        conn.orig_bytes += size
        conn.orig_pkts += 1
    else:
        conn.resp_bytes += size
        conn.resp_pkts += 1
    if proto == "tcp":
        if flags & dpkt.tcp.TH_SYN:
            conn.flags.add("synack_r" if (flags & dpkt.tcp.TH_ACK and not from_orig) else f"syn_{side}")
        if flags & dpkt.tcp.TH_FIN:
            conn.flags.add(f"fin_{side}")
        if flags & dpkt.tcp.TH_RST:
            conn.flags.add(f"rst_{side}")
