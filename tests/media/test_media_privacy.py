"""Media in the data contract and its enforcement on the device."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import numpy as np
import pytest

from iotguard.errors import ConfigError, MalformedError, PolicyDenied
from iotguard.keys import KeyKind, SoftwareKeyStore
from iotguard.media import DEFAULT_VOICE_METHOD, decode_wav
from iotguard.media.image import decode_image, independent_face_detector
from iotguard.privacy import ConsentState, load_contract, parse_contract, verify_receipt
from iotguard.privacy.media_contract import check_media
from iotguard.sim.media import synthetic_corpus
from iotguard.wire import MediaObject, decode_media_object, encode_media_object

DATA = Path(__file__).parent / "data"

_HEAD = """
[contract]
format = 1
model = "m-1"
version = 1
title = "t"
controller = "c"
contact = "c"
withdraw = "w"
[budget]
epsilon = 0.0
period = "1d"
[fields.speaking]
type = "bool"
description = "speaking"
[media.voice]
kind = "audio"
description = "sound"
"""


def _contract(purpose: str) -> str:
    return _HEAD + purpose


def test_existing_contract_digests_do_not_change_with_media_support() -> None:
    # A contract without [media] has the same canonical form as before media existed.
    c = load_contract("thermo-1")
    assert "media" not in c.to_dict()
    assert all("media" not in p for p in c.to_dict()["purposes"].values())


def test_raw_media_needs_a_consent_purpose() -> None:
    with pytest.raises(ConfigError, match="legal basis is consent"):
        parse_contract(_contract("""
[purposes.p]
description = "d"
legal_basis = "legitimate_interests"
retention = "1d"
min_interval = "1s"
[purposes.p.media.voice]
release = "raw"
"""))
    c = parse_contract(_contract("""
[purposes.p]
description = "d"
legal_basis = "consent"
retention = "1d"
min_interval = "1s"
[purposes.p.media.voice]
release = "raw"
"""))
    assert c.purposes["p"].media["voice"].release.value == "raw"
    assert "media" in c.to_dict()


@pytest.mark.parametrize(("body", "match"), [
    ('release = "anonymised"\nmethod = "pitch-shift"', "not one of"),
    ('release = "inference"\nmodel = "voice-activity"\nfield = "nope"', "not a field declared"),
    ('release = "inference"\nmodel = "people-count"\nfield = "speaking"', "not one of"),
    ('release = "everything"', "not one of"),
    ('release = "none"\nmethod = "mcadams"', "takes no other keys"),
])
def test_media_release_errors_name_the_key_path(body: str, match: str) -> None:
    text = _contract(f"""
[purposes.p]
description = "d"
legal_basis = "contract"
retention = "1d"
min_interval = "1s"
[purposes.p.fields.speaking]
[purposes.p.media.voice]
{body}
""")
    with pytest.raises(ConfigError, match=match) as err:
        parse_contract(text)
    assert "purposes.p.media.voice" in str(err.value)


def test_undeclared_stream_is_refused() -> None:
    with pytest.raises(ConfigError, match="not declared under"):
        parse_contract(_contract("""
[purposes.p]
description = "d"
legal_basis = "consent"
retention = "1d"
min_interval = "1s"
[purposes.p.media.camera]
release = "raw"
"""))


def test_hub_check_refuses_media_the_contract_does_not_release() -> None:
    c = load_contract("mic-1")
    voice = c.purposes["voice_messages"].media
    check_media(c.media, voice, "voice_messages", "voice", "anonymised", "pseudo-speaker")
    with pytest.raises(PolicyDenied):
        check_media(c.media, voice, "voice_messages", "voice", "raw", None)
    with pytest.raises(PolicyDenied):  # the weaker transform the contract named before version 2
        check_media(c.media, voice, "voice_messages", "voice", "anonymised", "randomised-vocoder")
    with pytest.raises(PolicyDenied):
        check_media(c.media, voice, "voice_messages", "voice", "anonymised", "mcadams")
    with pytest.raises(PolicyDenied):
        check_media(c.media, c.purposes["presence"].media, "presence", "voice", "anonymised", "mcadams")


def test_mic_contract_names_the_default_voice_method() -> None:
    # The shipped microphone contract releases voice only through the strongest transform.
    c = load_contract("mic-1")
    assert c.version >= 2
    check_media(c.media, c.purposes["voice_messages"].media, "voice_messages", "voice", "anonymised",
                DEFAULT_VOICE_METHOD)


def test_media_object_round_trip_and_strict_decoding() -> None:
    obj = MediaObject(1, "p", "voice", "anonymised", "mcadams", "wav", b"RIFF")
    assert decode_media_object(encode_media_object(obj)) == obj
    bad = obj.to_map()
    bad["x"] = 1
    for data in (cbor2.dumps(bad), cbor2.dumps({**obj.to_map(), "c": "mp3"}),
                 cbor2.dumps({**obj.to_map(), "m": None}), b"\xff", b"\0" * 10):
        with pytest.raises(MalformedError):
            decode_media_object(data)
    with pytest.raises(MalformedError, match="too large"):
        decode_media_object(b"\0" * 100, max_size=10)


class _Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:  # the test moves real time: wall and monotonic together
        return self.t.timestamp()


@pytest.fixture
def keystore(tmp_path: Path) -> SoftwareKeyStore:
    ks = SoftwareKeyStore(str(tmp_path / "ks"))
    ks.generate("identity", KeyKind.ED25519)
    return ks


def _privacy(keystore, model: str, granted: tuple[str, ...], clock: _Clock):  # type: ignore[no-untyped-def]
    from iotguard.agent.privacy import DevicePrivacy

    consent = ConsentState("subject-1")
    for p in granted:
        consent = consent.grant(p, clock.now())
    return DevicePrivacy(keystore, "dev-1", model, consent, clock, media_seed=3)  # type: ignore[arg-type]


def test_microphone_sends_only_labels_and_anonymised_voice(keystore) -> None:  # type: ignore[no-untyped-def]
    clock = _Clock()
    dp = _privacy(keystore, "mic-1", ("voice_messages",), clock)
    clip = synthetic_corpus(speakers=1, per_digit=1, digits="7")[0].audio
    readings, media = dp.process_media("voice", clip)
    assert [r.purpose for r in readings] == ["presence"]  # keypad has no digit model installed: refused
    assert readings[0].fields == {"voice_activity": True}
    assert "keypad" in dp.refused
    (obj,) = media
    assert obj.purpose == "voice_messages" and obj.method == "pseudo-speaker" and obj.release == "anonymised"
    sent = decode_wav(obj.data)
    assert len(sent.samples) == len(clip.samples)
    assert not np.allclose(sent.samples, clip.samples, atol=1e-3)  # not the raw clip
    receipt = verify_receipt(dp.seal_receipt(clock.now()), keystore.public_key("identity"))
    transforms = receipt["purposes"]["voice_messages"]["transforms"]["voice"]
    assert transforms[0].startswith("anonymised:pseudo-speaker:")
    assert receipt["purposes"]["presence"]["transforms"]["voice_activity"][0] == "inference:voice-activity"


def test_released_media_counts_in_the_receipt_only_once_recorded(keystore) -> None:  # type: ignore[no-untyped-def]
    """``release_media`` counts nothing: a label or media object the device failed to keep (outbox full:
    ``iotguard.agent.media.collect_media``) is never claimed as released by a receipt."""
    clock = _Clock()
    dp = _privacy(keystore, "mic-1", ("voice_messages",), clock)
    clip = synthetic_corpus(speakers=1, per_digit=1, digits="7")[0].audio
    labels, objects = dp.release_media("voice", clip)
    assert labels and objects
    assert dp.seal_receipt(clock.now()) is None  # nothing recorded: nothing claimed
    (label, label_entry), (_obj, _media_entry) = labels[0], objects[0]
    dp.record(label_entry)  # the label was kept; the media object never left
    receipt = verify_receipt(dp.seal_receipt(clock.now()), keystore.public_key("identity"))
    assert label.purpose in receipt["purposes"] and "voice_messages" not in receipt["purposes"]


def test_withdrawn_consent_stops_anonymised_voice(keystore) -> None:  # type: ignore[no-untyped-def]
    clock = _Clock()
    dp = _privacy(keystore, "mic-1", (), clock)
    clip = synthetic_corpus(speakers=1, per_digit=1, digits="3")[0].audio
    _readings, media = dp.process_media("voice", clip)
    assert media == [] and dp.refused["voice_messages"] == "no_consent"


def test_media_frequency_limit(keystore) -> None:  # type: ignore[no-untyped-def]
    clock = _Clock()
    dp = _privacy(keystore, "mic-1", ("voice_messages",), clock)
    clip = synthetic_corpus(speakers=1, per_digit=1, digits="3")[0].audio
    assert len(dp.process_media("voice", clip)[1]) == 1
    assert dp.process_media("voice", clip)[1] == []
    clock.t += timedelta(seconds=2)
    assert len(dp.process_media("voice", clip)[1]) == 1


def test_camera_redacts_every_face_before_encoding(keystore) -> None:  # type: ignore[no-untyped-def]
    clock = _Clock()
    dp = _privacy(keystore, "cam-1", ("snapshots",), clock)
    frame = decode_image((DATA / "astronaut.jpg").read_bytes())
    assert independent_face_detector().detect(frame), "the sample must show a detectable face"
    readings, media = dp.process_media("camera", frame)
    assert {r.purpose: r.fields for r in readings} == {"occupancy": {"people": 1}, "security": {"presence": True}}
    (obj,) = media
    assert obj.codec == "png" and obj.method == "face-redact"
    assert independent_face_detector().detect(decode_image(obj.data)) == []


def test_undeclared_stream_is_denied_on_the_device(keystore) -> None:  # type: ignore[no-untyped-def]
    dp = _privacy(keystore, "cam-1", (), _Clock())
    with pytest.raises(PolicyDenied):
        dp.process_media("voice", synthetic_corpus(1, 1, digits="1")[0].audio)
