"""Write the seed corpus: real messages built by the project's own encoders.

Run from the repository root: ``.venv/bin/python -m tests.fuzz.gen_corpus``.
Seeds land in ``tests/fuzz/corpus/<target>/<name>`` (committed, a few KiB in
all). Keys used to sign seeds are fixed test keys; signatures are not
checked by the parsers under test, only their shape.
"""

from __future__ import annotations

import io
import socket
import struct
import sys
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import dpkt
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.audit.note import Checkpoint
from iotguard.audit.tree import CompactRange
from iotguard.audit.verify import ExportBundle
from iotguard.channel.session import encode_ack, encode_command
from iotguard.detection import Alert, Severity
from iotguard.hub.mqtt_frames import Connect, encode_connect, encode_remaining_length
from iotguard.identity.enrollment import EnrollmentCode
from iotguard.identity.signed_request import encode_signed_request
from iotguard.keys.puf.fuzzy import FuzzyExtractor
from iotguard.media.audio import Audio, encode_wav
from iotguard.media.image import encode_image
from iotguard.privacy.consent import ConsentAck, ConsentConfig, ConsentDecision, ConsentState
from iotguard.privacy.receipt import PrivacyReceipt
from iotguard.wire.eat import BootEvent, EvidenceClaims, encode_evidence, event_log_digest
from iotguard.wire.envelope import encode_envelope
from iotguard.wire.media import MediaObject, encode_media_object
from iotguard.wire.reading import Reading, encode_reading

from . import tuf_target
from .targets import DEVICE_ID, MAC_KEY

CORPUS = Path(__file__).parent / "corpus"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _strip_fixed_header(frame: bytes) -> bytes:
    i = 1
    while frame[i] & 0x80:
        i += 1
    return frame[i + 1 :]


def _mqtt() -> dict[str, bytes]:
    connect = encode_connect(Connect("dev-1", 60, True, username="dev-1", password=b"pw"))
    will = encode_connect(Connect("dev-2", 30, False, will_topic="t/will", will_message=b"bye", will_qos=1))
    topic = b"iotguard/v1/dev-1/telemetry"
    publish = struct.pack(">H", len(topic)) + topic + struct.pack(">H", 7) + b"\xa0" * 8
    subscribe = struct.pack(">H", 3) + struct.pack(">H", len(topic)) + topic + b"\x01"
    assert encode_remaining_length(len(publish))  # the encoder the broker front uses for replies
    return {
        "connect": b"\x00" + _strip_fixed_header(connect),
        "connect_will": b"\x00" + _strip_fixed_header(will),
        "publish_qos1": bytes((0x40 | 0x02,)) + publish,
        "subscribe": bytes((0x80 | 0x02,)) + subscribe,
        "suback": b"\xc0" + struct.pack(">H", 3) + b"\x01",
    }


def _pcap() -> bytes:
    def eth(l4: dpkt.Packet, proto: int) -> bytes:
        ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.2"), dst=socket.inet_aton("10.0.0.1"), p=proto, data=l4)
        ip.len = len(bytes(ip))
        return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))

    buf = io.BytesIO()
    w = dpkt.pcap.Writer(buf)
    w.writepkt(eth(dpkt.tcp.TCP(sport=40000, dport=8883, flags=dpkt.tcp.TH_SYN), dpkt.ip.IP_PROTO_TCP), ts=1.0)
    w.writepkt(eth(dpkt.tcp.TCP(sport=40000, dport=8883, flags=dpkt.tcp.TH_ACK, data=b"x" * 20),
                   dpkt.ip.IP_PROTO_TCP), ts=1.5)
    w.writepkt(eth(dpkt.udp.UDP(sport=5353, dport=53, data=b"q" * 12, ulen=20), dpkt.ip.IP_PROTO_UDP), ts=2.0)
    return buf.getvalue()


ZEEK = (
    b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\t"
    b"resp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\t"
    b"resp_ip_bytes\ttunnel_parents\n"
    b"#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\t"
    b"string\tcount\tcount\tcount\tcount\tset[string]\n"
    b"1525879831.015811\tCUmrqr4svHuSXJy5z7\t192.168.100.103\t51524\t65.127.233.163\t23\ttcp\t-\t2.999051\t0\t0\t"
    b"S0\t-\t-\t0\tS\t3\t180\t0\t0\t(empty)\n"
    b"1525879832.5\tCabc\t192.168.100.103\t40000\t192.168.100.1\t53\tudp\tdns\t0.01\t40\t80\tSF\t-\t-\t0\tDd\t1\t68\t"
    b"1\t108\t(empty)\n"
)


def _tpm_quote() -> bytes:
    name, nonce = b"\x00\x0b" + b"n" * 32, b"q" * 32
    body = (struct.pack(">IH", 0xFF544347, 0x8018) + struct.pack(">H", len(name)) + name
            + struct.pack(">H", len(nonce)) + nonce + struct.pack(">QIIBQ", 1000, 3, 0, 1, 7)
            + struct.pack(">IHB", 1, 0x000B, 3) + b"\x11\x00\x00" + struct.pack(">H", 32) + b"\x22" * 32)
    return b"\x01" + body


def _receipt() -> bytes:
    body = {"v": 1, "type": "privacy-receipt", "device": DEVICE_ID, "model": "thermo", "contract_version": 2,
            "contract_sha256": b"\x01" * 32, "config_sha256": b"\x02" * 32, "issued_at": 1_800_000_000,
            "first_ts": 1_799_999_000_000, "last_ts": 1_800_000_000_000, "count": 12, "period": 3,
            "epsilon_spent": 0.5, "epsilon_period_total": 1.0, "budget_epsilon": 4.0,
            "purposes": {"billing": {"count": 12}}, "readings_sha256": b"\x03" * 32}
    raw = cbor2.dumps(body, canonical=True)
    return PrivacyReceipt(raw, KEY.sign(raw)).encode()


def seeds() -> dict[str, dict[str, bytes]]:
    """Every target's seeds, by name."""
    reading = Reading(1_800_000_000_000, {"temp_c": 21.5, "door": True, "count": 3, "room": "kitchen"}, "billing")
    state = ConsentState("subject-1", 3, {"billing": ConsentDecision(True, T0), "ads": ConsentDecision(False, T0)})
    config = ConsentConfig(DEVICE_ID, state, T0)
    events = (BootEvent(0, b"\x11" * 32, "bootloader", "1.0.0"), BootEvent(4, b"\x22" * 32, "kernel", ""))
    claims = EvidenceClaims(nonce=b"n" * 32, issued_at=1_800_000_000, ueid=b"\x01" + b"u" * 32, uptime=7,
                            firmware_version="1.0.0", event_log=events, event_log_digest=event_log_digest(events),
                            pcr_selection=(0, 4), quote_format="iotguard-sw-quote/1", quote_attest=b"attest",
                            quote_signature=b"", privacy_config_hash=b"\x33" * 32, keystore_kind="software",
                            keystore_tamper="")
    t = np.linspace(0, 0.05, 400)
    wav = encode_wav(Audio(0.3 * np.sin(2 * np.pi * 440 * t), 8000))
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    frame[2:6, 2:6] = (200, 40, 90)
    png = encode_image(frame, "png")
    _, helper = FuzzyExtractor().generate(np.zeros(4096, dtype=np.uint8))
    checkpoint = Checkpoint("hub.example/audit", 5, b"\x42" * 32).body()
    alert = Alert.create("sim-thermo-0", "scan_fanout", 316.5, Severity.HIGH, (1700000000.25, 1700000060.5))
    playbook = (Path(__file__).parents[2] / "src/iotguard/detection/default_playbook.toml").read_bytes()
    return {
        "envelope": {"v1": encode_envelope(1, DEVICE_ID, 3, 17, b"\x00" * 40)},
        "reading": {"v1": encode_reading(reading), "no_purpose": encode_reading(Reading(5, {"x": -1}))},
        "ack": {"ranges": encode_ack(DEVICE_ID, 3, [1, 2, 3, 7, 9, 10], MAC_KEY)[:-16]},
        "command": {"rekey": encode_command(DEVICE_ID, "rekey", b"\x01\x02", MAC_KEY)[:-16]},
        "consent_config": {"v1": config.encode()},
        "consent_ack": {"v1": ConsentAck(DEVICE_ID, 3, config.digest(), T0).encode()},
        "receipt": {"v1": _receipt()},
        "signed_request": {
            "consent_ack": encode_signed_request("consent_ack", DEVICE_ID, {"ack": b"a" * 40}, 1_800_000_000,
                                                 b"\x05" * 16),
            "rekey": encode_signed_request("rekey", DEVICE_ID, {"epoch": 4, "kex_public_key": b"\x07" * 32,
                                                                "suites": ["ascon128a"]}, 1_800_000_000, b"\x06" * 16),
        },
        "enrollment_code": {"v1": str(EnrollmentCode(DEVICE_ID, b"\x09" * 32, "ab" * 32)).encode()},
        "eat": {"v1": encode_evidence(claims, "EdDSA", KEY.sign)},
        "quote": {"tpm2": _tpm_quote()},
        "media_object": {"wav": encode_media_object(MediaObject(1_800_000_000_000, "voice", "mic", "anonymised",
                                                                "mcadams", "wav", wav))},
        "wav": {"sine": wav},
        "image": {"png": png},
        "mqtt": _mqtt(),
        "zeek": {"conn": ZEEK},
        "pcap": {"tcp_udp": _pcap()},
        "puf_helper": {"v1": helper.to_bytes()},
        "note": {"checkpoint": (checkpoint + "\n\u2014 hub.example/audit AAAAAQ" + "A" * 86 + "\n").encode()},
        "checkpoint": {"v1": checkpoint.encode()},
        "audit_bundle": {"segment": ExportBundle(checkpoint, 2, [b"entry-2", b"entry-3"], [b"\x01" * 32],
                                                 [b"\x02" * 32, b"\x03" * 32], {1: [b"\x04" * 32]}).to_json().encode()},
        "compact_range": {"size5": b"\x00\x05" + CompactRange(5, (b"\x01" * 32, b"\x02" * 32)).encode()},
        "playbook": {"default": playbook},
        "feed": {"mixed": b"# botnet C2\n203.0.113.66\n198.51.100.0/24  # sinkhole\n\n2001:db8:bad::/48\n"},
        "alert": {"v1": alert.to_json().encode()},
        "alert_cbor": {"v1": alert.to_cbor()},
        "tuf_metadata": tuf_target.seeds(),
    }


def main() -> int:
    """Write the corpus files; prints how many."""
    n = 0
    for target, files in seeds().items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
            n += 1
    print(f"wrote {n} seeds under {CORPUS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
