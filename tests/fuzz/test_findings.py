"""Regression tests for what fuzzing found (bench/fuzz.sh, tests/fuzz/test_fuzz.py).

Each finding is the smallest input the fuzzer saved, committed verbatim, and
the assertion is on the reason code the fixed parser now gives.
"""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from iotguard.errors import MalformedError
from iotguard.media.image import decode_image

#: atheris, 2026-11-30 (short run, target ``image``): 60 bytes, an 8x8 PNG whose
#: IDAT chunk states more bytes than follow. OpenCV's decoder reached 4 GiB RSS.
TRUNCATED_PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSnc/gAAO0lEQVQJK/CcdQAAEABJRU5ErkJggg==")


def test_truncated_png_chunk_is_refused_before_the_decoder_allocates() -> None:
    with pytest.raises(MalformedError) as exc:
        decode_image(TRUNCATED_PNG)
    assert exc.value.code == "png_chunk_invalid"


def test_truncated_png_does_not_cost_gigabytes() -> None:
    code = ("import base64, resource; from iotguard.errors import MalformedError; "
            "from iotguard.media.image import decode_image\n"
            f"try: decode_image(base64.b64decode({base64.b64encode(TRUNCATED_PNG).decode()!r}))\n"
            "except MalformedError: pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert int(out.stdout.split()[-1]) < 1024 * 1024  # KiB: under 1 GiB (it was 4 GiB)


#: atheris, 2026-11-30 (in-suite short run, target ``pcap``; the old "fuzz target exited"
#: finding): a raw-IP capture of one IPv6 packet whose fragment header is followed by an AH
#: header. dpkt's ``IP6.unpack`` then raises ``AttributeError`` ('IP6AHHeader' has no
#: 'frag_off'). atheris prints such a traceback on stdout and libFuzzer reports only "fuzz
#: target exited" on stderr, which is why the finding looked like a process exit.
IPV6_FRAGMENT_THEN_AH_PCAP = base64.b64decode(
    "1MOyoQIABAAAAAAAAAAAAP//AABlAAAAAQAAAAAAAAA8AAAAPAAAAGAAAAAAFCxAAAAAAAAAAAAAAAAAAAAAAQAAAA"
    "AAAAAAAAAAAAAAAAIzAAAAAAAABzsBAAAAAAABAAAAAQ==")


def test_ipv6_fragment_followed_by_ah_is_a_bad_packet_not_a_crash() -> None:
    from iotguard.detection.pcap import flows_from_pcap

    result = flows_from_pcap(IPV6_FRAGMENT_THEN_AH_PCAP)
    assert result.packets == 1 and result.skipped == {"pcap_bad_packet": 1} and not result.flows


def _release_with_custom(field: str, value: object) -> bytes:
    """Target ``tuf_metadata`` input: the model role, re-signed, its release's ``custom.<field>`` replaced."""
    import json

    from .tuf_target import MODEL, ROLES, newest, repository_files

    files = repository_files()
    md = json.loads(files[newest(files, MODEL)])
    (target,) = md["signed"]["targets"].values()
    target["custom"][field] = value
    return bytes((0x80 | ROLES.index(MODEL),)) + json.dumps(md).encode()


@pytest.mark.parametrize("model", [123, None, ["thermo"]])
def test_release_with_a_non_string_model_is_refused_with_a_reason_not_a_type_error(model: object) -> None:
    """Finding while writing target ``tuf_metadata`` (2026-12-01; crafted through its re-signed mode, not
    reached by the short atheris runs): a correctly signed model role whose
    release names a non-string ``custom.model`` made ``FirmwareRelease`` raise ``TypeError``
    (``re.fullmatch`` on an int), which escaped the agent's update client and its update round."""
    from iotguard.errors import UpdateRefused

    from .tuf_target import tuf_metadata

    with pytest.raises(UpdateRefused) as exc:
        tuf_metadata(_release_with_custom("model", model))
    assert exc.value.code == "update_release_malformed"


def test_release_fields_of_the_wrong_type_are_malformed() -> None:
    from datetime import date

    from iotguard.updates import FirmwareRelease

    for fields in ({"model": 7}, {"image_sha256": None}, {"disclosure_contact": b"x"}):
        kwargs: dict[str, object] = {"model": "thermo", "version": 2, "image_sha256": "0" * 64, "image_length": 1,
                                     "end_of_support": date(2031, 1, 1), "disclosure_contact": "x", **fields}
        with pytest.raises(MalformedError):
            FirmwareRelease(**kwargs)  # type: ignore[arg-type]
