"""Privacy at the sensor for voice and images, end to end.

A simulated camera (cam-1) and a simulated microphone (mic-1) enroll with a
real hub and publish through the real broker under contracts that allow
only inferences and anonymised media. A sniffer on the broker decrypts every
envelope with the devices' own session keys (what the hub could see) and
finds labels and anonymised media only: no raw frame, no raw audio, and no
face that a face detector can find in any image sent. Everything runs under
mutual TLS (the embedded broker's front): the ``media`` topic is granted by
the Cedar-derived ACL like telemetry, and the hub stores and acknowledges
each media object after checking it against the device's data contract.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iotguard.agent import Agent
from iotguard.agent.media import collect_media
from iotguard.agent.privacy import DevicePrivacy
from iotguard.channel import MEDIA_FILTER, TELEMETRY_FILTER, make_nonce
from iotguard.config import AgentConfig
from iotguard.crypto import get_suite
from iotguard.hub.service import Hub
from iotguard.media import DigitRecogniser, decode_wav, encode_wav
from iotguard.media.image import decode_image, encode_image, independent_face_detector
from iotguard.media.sensing import AudioModels
from iotguard.privacy import ConsentState, load_contract
from iotguard.sim.media import synthetic_corpus
from iotguard.wire import associated_data, decode_envelope, decode_media_object, decode_reading

pytestmark = pytest.mark.slow

FACE = Path(__file__).parents[1] / "media" / "data" / "astronaut.jpg"


@pytest.fixture
def hub(embedded_hub: Hub) -> Hub:
    return embedded_hub


class Sniffer:
    """Sees every telemetry and media payload (it holds the hub's broker identity:
    under mTLS nothing else may read other devices' topics)."""

    def __init__(self, hub: Hub) -> None:
        from iotguard.tls import client_context

        addr = hub.broker_address
        self.payloads: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="media-sniffer")
        self.client.tls_set_context(client_context(hub.ca_file, certfile=hub.tls.hub_mqtt_file))
        self.client.on_message = lambda _c, _u, m: self.payloads.append((m.topic, bytes(m.payload)))
        self.client.connect(addr.host, int(addr.port))
        self.client.subscribe([(TELEMETRY_FILTER, 0), (MEDIA_FILTER, 0)])
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _device(hub: Hub, tmp_path: Path, device_id: str, model: str, granted: tuple[str, ...],
            **media: object) -> Agent:
    code = str(hub.lifecycle.add_device(device_id, model))
    agent = Agent(AgentConfig(data_dir=str(tmp_path / device_id), hub_url=hub.api_url,
                              broker_url=hub.broker_address.url), device_id)
    agent.enroll(code)
    consent = ConsentState(f"subject-{device_id}")
    for purpose in load_contract(model).purposes:
        consent = consent.grant(purpose, agent.clock.now()) if purpose in granted else consent
    hub.services.consent.record_initial_consent(consent.subject_id, device_id,
                                    {p: d.granted for p, d in sorted(consent.decisions.items())})
    # The device's privacy pipeline, with its on-device models (the digit recogniser).
    agent.privacy = DevicePrivacy(agent.keystore, device_id, model, consent, agent.clock, **media)  # type: ignore[arg-type]
    agent.connect()
    return agent


def _stored_media(hub: Hub) -> list[tuple[str, object]]:
    """Media objects the hub stored: (device, decoded object)."""
    rows = hub.services.store.readings_after(0, limit=1000)
    return [(r.device_id, decode_media_object(r.body)) for r in rows if r.topic.endswith("/media")]


def _frame(face: np.ndarray, x: int) -> np.ndarray:
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[:, :, 1] = np.linspace(40, 200, 320, dtype=np.uint8)[None, :]
    small = face[::2, ::2][:120, :110]
    frame[40 : 40 + small.shape[0], x : x + small.shape[1]] = small
    return frame


def test_camera_and_microphone_send_only_labels_and_anonymised_media(hub: Hub, tmp_path: Path) -> None:
    corpus = synthetic_corpus(speakers=3, per_digit=4, seed=9)
    recogniser = DigitRecogniser()
    recogniser.fit(corpus)
    sniffer = Sniffer(hub)
    raw_clips, raw_frames = [], []
    try:
        mic = _device(hub, tmp_path, "mic-0001", "mic-1", ("voice_messages",),
                      audio_models=AudioModels(digits=recogniser))
        cam = _device(hub, tmp_path, "cam-0001", "cam-1", ("snapshots",))
        time.sleep(0.3)
        face = decode_image(FACE.read_bytes())
        for i in range(3):
            clip = corpus[i * 13].audio
            raw_clips.append(clip)
            labels, media = collect_media(mic, "voice", clip)
            assert labels and media
            frame = _frame(face, 20 + 60 * i)
            raw_frames.append(frame)
            labels, media = collect_media(cam, "camera", frame)
            assert labels and media
            time.sleep(1.05)  # the contracts' minimum interval between releases is one second
        deadline = time.monotonic() + 20
        while (mic.pending() or cam.pending()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mic.pending() == 0 and cam.pending() == 0, "the hub did not store the labels"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_stored_media(hub)) < 6:
            time.sleep(0.1)
        time.sleep(0.5)
        agents = {"mic-0001": mic, "cam-0001": cam}
        labels: dict[str, list[dict[str, object]]] = {"mic-0001": [], "cam-0001": []}
        media_seen: dict[str, list[object]] = {"mic-0001": [], "cam-0001": []}
        raw_wavs = [encode_wav(c) for c in raw_clips]
        raw_pngs = [encode_image(f) for f in raw_frames]
        for topic, payload in sniffer.payloads:
            kind = topic.rsplit("/", 1)[-1]
            if kind not in ("telemetry", "media"):
                continue
            for raw in raw_wavs:
                assert raw[44:1044] not in payload, "raw audio samples on the wire"
            env = decode_envelope(payload, max_size=4 * 1024 * 1024)
            agent = agents[env.device_id]
            suite = get_suite(env.suite_id)
            plain = suite.open(agent._keys.uplink, make_nonce(env.epoch, env.seq, suite.nonce_size),  # type: ignore[union-attr]
                               associated_data(env.header, topic), env.ciphertext)
            for raw in raw_wavs:
                assert raw[44:1044] not in plain, "raw audio inside a sealed envelope"
            for raw in raw_pngs:
                assert raw not in plain, "a raw frame inside a sealed envelope"
            if kind == "telemetry":
                reading = decode_reading(plain)
                labels[env.device_id].append({"p": reading.purpose, **reading.fields})
            else:
                obj = decode_media_object(plain)
                assert obj.release == "anonymised"
                media_seen[env.device_id].append(obj)
    finally:
        sniffer.close()
        for a in (locals().get("mic"), locals().get("cam")):
            if a is not None:
                a.close()

    # The microphone: voice activity and the recognised digit as labels; voice only anonymised.
    assert {lbl["p"] for lbl in labels["mic-0001"]} == {"presence", "keypad"}
    assert all(set(lbl) <= {"p", "voice_activity", "digit"} for lbl in labels["mic-0001"])
    assert len(media_seen["mic-0001"]) == 3
    for obj, raw in zip(media_seen["mic-0001"], raw_clips, strict=True):
        assert obj.method == "pseudo-speaker"  # type: ignore[attr-defined]
        sent = decode_wav(obj.data)  # type: ignore[attr-defined]
        assert len(sent.samples) == len(raw.samples)
        assert abs(np.corrcoef(sent.samples, raw.samples)[0, 1]) < 0.5, "the clip was not transformed"
    # The camera: people counts and presence as labels; pictures only with every face redacted.
    assert {lbl["p"] for lbl in labels["cam-0001"]} == {"occupancy", "security"}
    assert all(lbl.get("people", 1) >= 1 for lbl in labels["cam-0001"])
    assert len(media_seen["cam-0001"]) == 3
    detector = independent_face_detector()
    for obj, raw_frame in zip(media_seen["cam-0001"], raw_frames, strict=True):
        sent_frame = decode_image(obj.data)  # type: ignore[attr-defined]
        assert detector.detect(raw_frame), "the simulated camera must capture a detectable face"
        assert detector.detect(sent_frame) == [], "a face left the device"
        assert not np.array_equal(sent_frame, raw_frame)

    # The hub stored each media object once (checked against the contract: anonymised, declared method).
    stored = _stored_media(hub)
    assert sorted(d for d, _o in stored) == ["cam-0001"] * 3 + ["mic-0001"] * 3
    assert {(o.stream, o.release, o.method) for _d, o in stored} == {  # type: ignore[attr-defined]
        ("voice", "anonymised", "pseudo-speaker"), ("camera", "anonymised", "face-redact")}
    assert hub.services.store.rejection_totals().get("policy_denied", 0) == 0
