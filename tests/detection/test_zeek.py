"""Zeek conn.log reader: TSV, the IoT-23 space-separated variant, JSON lines, strict rejections."""

from __future__ import annotations

import json

import pytest

from iotguard.detection import Flow, ZeekLimits, parse_conn_log
from iotguard.detection.zeek import format_conn_log
from iotguard.errors import MalformedError

HEADER = (
    "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\t"
    "resp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\t"
    "resp_ip_bytes\ttunnel_parents{sep}label{sep}detailed-label\n"
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\t"
    "string\tcount\tcount\tcount\tcount\tset[string]{sep}string{sep}string\n"
)
ROW = ("1525879831.015811\tCUmrqr4svHuSXJy5z7\t192.168.100.103\t51524\t65.127.233.163\t23\ttcp\t-\t2.999051\t0\t0\t"
       "S0\t-\t-\t0\tS\t3\t180\t0\t0\t(empty){sep}Malicious{sep}PartOfAHorizontalPortScan\n"
       "1525879832.5\tCabc\t192.168.100.103\t40000\t192.168.100.1\t53\tudp\tdns\t0.01\t40\t80\tSF\t-\t-\t0\tDd\t1\t68\t"
       "1\t108\t(empty){sep}Benign{sep}-\n")


def _log(sep: str) -> bytes:
    return (HEADER + ROW).format(sep=sep).encode()


def test_tab_separated_labeled_log() -> None:
    log = parse_conn_log(_log("\t"), label_column="label")
    assert log.format == "tsv" and len(log.flows) == 2
    assert list(log.labels) == ["Malicious", "Benign"]
    first = log.flows.flow(0)
    assert (first.orig_h, first.resp_p, first.proto, first.conn_state) == ("192.168.100.103", 23, "tcp", "S0")
    assert log.flows.flow(1).resp_bytes == 80 and log.flows.service_known.tolist() == [0, 1]


def test_iot23_space_separated_last_fields() -> None:
    """IoT-23 publishes the last header fields and values separated by runs of spaces."""
    log = parse_conn_log(_log("   "), label_column="label")
    assert list(log.labels) == ["Malicious", "Benign"]
    assert log.flows.ts.tolist() == parse_conn_log(_log("\t"), label_column="label").flows.ts.tolist()


def test_json_lines() -> None:
    recs = [{"ts": 10.5, "uid": "C1", "id.orig_h": "10.0.0.2", "id.orig_p": 5000, "id.resp_h": "10.0.0.1",
             "id.resp_p": 8883, "proto": "tcp", "duration": 0.2, "orig_bytes": 300, "resp_bytes": 60,
             "conn_state": "SF", "orig_pkts": 4, "resp_pkts": 3, "label": "Benign"},
            {"ts": "2024-05-01T10:00:00.250000Z", "id.orig_h": "10.0.0.2", "id.orig_p": 5001,
             "id.resp_h": "10.0.0.9", "id.resp_p": 23, "proto": "tcp", "conn_state": "S0", "label": "Malicious"}]
    log = parse_conn_log("\n".join(json.dumps(r) for r in recs).encode(), label_column="label")
    assert log.format == "json" and len(log.flows) == 2
    assert log.flows.ts[1] == pytest.approx(1714557600.25)
    assert log.flows.flow(1).orig_bytes == 0  # absent counts are zero


def test_round_trip_through_writer() -> None:
    flows = [Flow(1.0, "10.0.0.2", 1000, "10.0.0.1", 80, "tcp", 0.5, 10, 20, "SF", 2, 2, "http"),
             Flow(2.0, "10.0.0.3", 0, "10.0.0.1", 8, "icmp", 0.0, 0, 0, "OTH", 1, 0)]
    log = parse_conn_log(format_conn_log(flows, ["Benign", "Malicious"]), label_column="label")
    assert [log.flows.flow(i).conn_state for i in range(2)] == ["SF", "OTH"]
    assert list(log.labels) == ["Benign", "Malicious"]


@pytest.mark.parametrize(("mutate", "code"), [
    (lambda b: b.replace(b"#fields", b"#nofields"), "zeek_no_header"),
    (lambda b: b.replace(b"\t23\t", b"\t70000\t", 1), "zeek_bad_port"),
    (lambda b: b.replace(b"\t23\t", b"\t-23\t", 1), "zeek_bad_port"),
    (lambda b: b.replace(b"1525879831.015811", b"nan", 1), "zeek_bad_time"),
    (lambda b: b.replace(b"\tS0\t", b"\tXX\t", 1), "zeek_bad_state"),
    (lambda b: b.replace(b"\t2.999051\t", b"\t-1\t", 1), "zeek_bad_interval"),
    (lambda b: b.replace(b"\t3\t180\t", b"\t3x\t180\t", 1), "zeek_bad_count"),
    (lambda b: b.replace(b"(empty)\tMalicious\tPartOfAHorizontalPortScan", b"Malicious", 1), "zeek_field_count"),
    (lambda b: b.replace(b"#path\tconn", b"#path\tdns"), "zeek_not_conn_log"),
    (lambda b: b.replace(b"#separator \\x09", b"#separator ,"), "zeek_bad_header"),
    (lambda b: b + b"\xff\xfe\n", "zeek_not_utf8"),
    (lambda b: b"", "zeek_empty"),
    (lambda b: b.replace(b"192.168.100.103\t51524", b"-\t51524", 1), "zeek_missing_field"),
])
def test_rejections_carry_reason_codes(mutate, code) -> None:
    with pytest.raises(MalformedError) as err:
        parse_conn_log(mutate(_log("\t")), label_column="label")
    assert err.value.code == code


def test_missing_label_column_is_rejected() -> None:
    with pytest.raises(MalformedError) as err:
        parse_conn_log(_log("\t"), label_column="verdict")
    assert err.value.code == "zeek_no_label_column"


def test_size_limits() -> None:
    data = _log("\t")
    with pytest.raises(MalformedError) as err:
        parse_conn_log(data, limits=ZeekLimits(max_bytes=100))
    assert err.value.code == "zeek_too_large"
    with pytest.raises(MalformedError) as err:
        parse_conn_log(data, limits=ZeekLimits(max_records=1))
    assert err.value.code == "zeek_too_many_records"
    with pytest.raises(MalformedError) as err:
        parse_conn_log(data + b"1" * 20000 + b"\n")
    assert err.value.code == "zeek_line_too_long"


GOOD_JSON = b'{"ts": 1, "id.orig_h": "a", "id.orig_p": 1, "id.resp_h": "b", "id.resp_p": 2, "proto": "tcp"}'


def test_json_rejections() -> None:
    for bad, code in ((b'{"ts": 1', "zeek_bad_json"), (b"[1, 2]", "zeek_bad_json"),
                      (b'{"ts": true, "id.orig_h": "a", "id.orig_p": 1, "id.resp_h": "b", "id.resp_p": 2, '
                       b'"proto": "tcp"}', "zeek_bad_time"),
                      (b'{"ts": 1, "id.orig_h": "a", "id.orig_p": 1.5, "id.resp_h": "b", "id.resp_p": 2, '
                       b'"proto": "tcp"}', "zeek_bad_port")):
        with pytest.raises(MalformedError) as err:
            parse_conn_log(GOOD_JSON + b"\n" + bad if bad.startswith(b"[") else bad)
        assert err.value.code == code
