"""pcap -> flows with dpkt: connection states, byte counts, rejections (captures built in the test)."""

from __future__ import annotations

import io
import socket

import dpkt
import pytest

from iotguard.detection import PcapLimits, flows_from_pcap
from iotguard.errors import MalformedError

DEV, HUB, OTHER = "10.20.0.5", "10.0.0.1", "198.51.100.7"


def _eth(src: str, dst: str, l4: dpkt.Packet, proto: int) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, data=l4)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def _tcp(src: str, sport: int, dst: str, dport: int, flags: int, payload: bytes = b"") -> bytes:
    return _eth(src, dst, dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=payload), dpkt.ip.IP_PROTO_TCP)


def _udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(bytes(udp))
    return _eth(src, dst, udp, dpkt.ip.IP_PROTO_UDP)


def _capture(packets: list[tuple[float, bytes]]) -> bytes:
    buf = io.BytesIO()
    writer = dpkt.pcap.Writer(buf)
    for ts, pkt in packets:
        writer.writepkt(pkt, ts=ts)
    return buf.getvalue()


S, A, F, R, P = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH


def test_connection_states_and_counts() -> None:
    packets = [
        # a complete TLS-like exchange: SF
        (100.0, _tcp(DEV, 40000, HUB, 8883, S)), (100.01, _tcp(HUB, 8883, DEV, 40000, S | A)),
        (100.02, _tcp(DEV, 40000, HUB, 8883, A | P, b"x" * 300)),
        (100.03, _tcp(HUB, 8883, DEV, 40000, A | P, b"y" * 60)),
        (100.04, _tcp(DEV, 40000, HUB, 8883, F | A)), (100.05, _tcp(HUB, 8883, DEV, 40000, F | A)),
        # an unanswered SYN (scan): S0
        (101.0, _tcp(DEV, 40001, OTHER, 23, S)),
        # a refused SYN: REJ
        (102.0, _tcp(DEV, 40002, OTHER, 2323, S)), (102.01, _tcp(OTHER, 2323, DEV, 40002, R | A)),
        # UDP both ways: SF; one way: S0
        (103.0, _udp(DEV, 5353, HUB, 53, b"q" * 30)), (103.01, _udp(HUB, 53, DEV, 5353, b"r" * 90)),
        (104.0, _udp(DEV, 5000, OTHER, 9999, b"z" * 1400)),
    ]
    result = flows_from_pcap(_capture(packets))
    assert result.packets == len(packets) and not result.skipped
    by_port = {f.resp_p: f for f in result.flows}
    sf = by_port[8883]
    assert (sf.orig_h, sf.conn_state, sf.orig_bytes, sf.resp_bytes, sf.orig_pkts, sf.resp_pkts) == (
        DEV, "SF", 300, 60, 3, 3)
    assert sf.duration == pytest.approx(0.05)
    assert by_port[23].conn_state == "S0" and by_port[23].resp_pkts == 0
    assert by_port[2323].conn_state == "REJ"
    assert by_port[53].conn_state == "SF" and by_port[53].resp_bytes == 90
    assert by_port[9999].conn_state == "S0" and by_port[9999].orig_bytes == 1400
    assert [f.ts for f in result.flows] == sorted(f.ts for f in result.flows)


def test_idle_connection_splits_into_two_flows() -> None:
    packets = [(10.0, _udp(DEV, 5000, HUB, 53, b"a")), (10.5, _udp(HUB, 53, DEV, 5000, b"b")),
               (500.0, _udp(DEV, 5000, HUB, 53, b"c"))]
    assert len(flows_from_pcap(_capture(packets)).flows) == 2


def test_garbage_packet_is_skipped_and_counted() -> None:
    packets = [(1.0, b"\x01\x02\x03"), (2.0, _tcp(DEV, 40001, OTHER, 23, S))]
    result = flows_from_pcap(_capture(packets))
    assert len(result.flows) == 1
    assert sum(result.skipped.values()) == 1


def test_not_a_capture_is_rejected() -> None:
    with pytest.raises(MalformedError) as err:
        flows_from_pcap(b"#separator \\x09\n" * 10)
    assert err.value.code == "pcap_bad_header"


def test_limits() -> None:
    data = _capture([(float(i), _tcp(DEV, 40000 + i, OTHER, 23, S)) for i in range(20)])
    with pytest.raises(MalformedError) as err:
        flows_from_pcap(data, PcapLimits(max_bytes=100))
    assert err.value.code == "pcap_too_large"
    with pytest.raises(MalformedError) as err:
        flows_from_pcap(data, PcapLimits(max_packets=5))
    assert err.value.code == "pcap_too_many_packets"
    with pytest.raises(MalformedError) as err:
        flows_from_pcap(data, PcapLimits(max_open_connections=5))
    assert err.value.code == "pcap_too_many_connections"
