"""Fuzz targets: every parser of untrusted bytes, one function ``bytes -> None`` each.

A target calls the project's own parser on the fuzzer's bytes. The harness
(:func:`run_one`) accepts only :class:`iotguard.errors.IotGuardError`
(a reason-coded rejection); any other exception, a hang or a crash of the
interpreter is a finding.

Parsers whose input is text (signed notes, checkpoints, audit bundles,
enrollment codes, alerts) are fed the bytes decoded as UTF-8; bytes that
are not UTF-8 are skipped, because those parsers receive ``str`` from a
JSON body or a file already decoded by the caller.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

from iotguard.attestation.quote import QuoteFormat, parse_quote
from iotguard.audit.note import Checkpoint, parse_note
from iotguard.audit.tree import CompactRange
from iotguard.audit.verify import ExportBundle
from iotguard.channel.session import decode_ack, decode_command
from iotguard.detection.alert import Alert
from iotguard.detection.feed import parse_feed
from iotguard.detection.pcap import flows_from_pcap
from iotguard.detection.playbook import parse_playbook
from iotguard.detection.zeek import parse_conn_log
from iotguard.errors import IotGuardError
from iotguard.hub.mqtt_frames import parse_connect, parse_publish, parse_suback, parse_subscribe
from iotguard.identity.enrollment import parse_enrollment_code
from iotguard.identity.signed_request import parse_signed_request
from iotguard.keys.puf.fuzzy import HelperData
from iotguard.media.audio import decode_wav
from iotguard.media.image import decode_image
from iotguard.privacy.consent import ConsentAck, ConsentConfig
from iotguard.privacy.receipt import decode_receipt
from iotguard.wire.eat import decode_evidence
from iotguard.wire.envelope import decode_envelope
from iotguard.wire.media import decode_media_object
from iotguard.wire.reading import decode_reading

from .tuf_target import tuf_metadata

#: The MAC key the ack/command targets authenticate fuzzed bodies with, so
#: the fuzzer reaches the parsing behind the MAC check.
MAC_KEY = b"k" * 32
DEVICE_ID = "fuzz-device"


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _with_mac(label: bytes, body: bytes) -> bytes:
    mac = hmac.new(MAC_KEY, label + DEVICE_ID.encode() + b"\x00" + body, hashlib.sha256)
    return body + mac.digest()[:16]


def _ack(data: bytes) -> None:
    decode_ack(DEVICE_ID, _with_mac(b"iotguard-ack-v1\x00", data), MAC_KEY)


def _command(data: bytes) -> None:
    decode_command(DEVICE_ID, _with_mac(b"iotguard-cmd-v1\x00", data), MAC_KEY)


def _signed_request(data: bytes) -> None:
    # The wire form is base64url text; the fuzzer mutates the CBOR inside it.
    request = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    parse_signed_request(request, "A" * 86)


def _quote(data: bytes) -> None:
    fmt = QuoteFormat.TPM2.value if data[:1] == b"\x01" else QuoteFormat.SOFTWARE.value
    parse_quote(fmt, data[1:])


def _mqtt(data: bytes) -> None:
    if not data:
        return
    kind, flags, body = data[0] >> 6, data[0] & 0x0F, data[1:]
    if kind == 0:
        parse_connect(body)
    elif kind == 1:
        parse_publish(flags, body)
    elif kind == 2:
        parse_subscribe(flags, body)
    else:
        parse_suback(body)


def _text_target(parse: Callable[[str], object]) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        text = _text(data)
        if text is not None:
            parse(text)

    return target


def _compact_range(data: bytes) -> None:
    CompactRange.decode(int.from_bytes(data[:2], "big"), data[2:])


TARGETS: dict[str, Callable[[bytes], object]] = {
    "envelope": decode_envelope,
    "reading": decode_reading,
    "ack": _ack,
    "command": _command,
    "consent_config": ConsentConfig.decode,
    "consent_ack": ConsentAck.decode,
    "receipt": decode_receipt,
    "signed_request": _signed_request,
    "enrollment_code": _text_target(parse_enrollment_code),
    "eat": decode_evidence,
    "quote": _quote,
    "media_object": decode_media_object,
    "wav": decode_wav,
    "image": decode_image,
    "mqtt": _mqtt,
    "zeek": parse_conn_log,
    "pcap": flows_from_pcap,
    "puf_helper": HelperData.from_bytes,
    "note": _text_target(parse_note),
    "checkpoint": _text_target(Checkpoint.from_body),
    "audit_bundle": _text_target(ExportBundle.from_json),
    "compact_range": _compact_range,
    "playbook": parse_playbook,
    "feed": parse_feed,
    "alert": _text_target(Alert.from_json),
    "alert_cbor": Alert.from_cbor,
    "tuf_metadata": tuf_metadata,
}


def run_one(name: str, data: bytes) -> None:
    """Run target ``name`` on ``data``; a reason-coded rejection is a pass.

    Raises:
        Exception: anything that is not an :class:`IotGuardError` (a finding).
    """
    try:
        TARGETS[name](data)
    except IotGuardError as exc:
        if not exc.code:
            raise AssertionError(f"{name}: rejection without a reason code") from exc
