"""Images: strict codec, irreversible redaction, device-side labels."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from iotguard.errors import ConfigError, MalformedError
from iotguard.media import (
    Audio,
    FaceDetector,
    FaceRedactor,
    ImageModels,
    decode_image,
    encode_image,
    independent_face_detector,
    voice_activity,
)
from iotguard.sim.media import synthetic_corpus

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return decode_image((DATA / "astronaut.jpg").read_bytes())


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_png_and_jpeg_round_trip(face: np.ndarray) -> None:
    assert np.array_equal(decode_image(encode_image(face, "png")), face)
    assert decode_image(encode_image(face, "jpeg")).shape == face.shape
    with pytest.raises(ConfigError):
        encode_image(face, "gif")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(MalformedError, match="exceeds"):
        decode_image(_png_header(100_000, 100_000) + b"\0" * 64)


@pytest.mark.parametrize("data", [b"GIF89a....", b"\xff\xd8\xff\xe0\x00\x01", b"\x89PNG\r\n\x1a\n\0\0\0\0JUNK",
                                  _png_header(10, 10) + b"not image data"])
def test_malformed_images_are_rejected(data: bytes) -> None:
    with pytest.raises(MalformedError):
        decode_image(data)


def test_oversized_encoded_image_is_refused() -> None:
    with pytest.raises(MalformedError, match="exceeds"):
        decode_image(b"\x89PNG" + b"\0" * 100, max_bytes=50)


def test_redaction_replaces_every_pixel_of_the_face_box(face: np.ndarray) -> None:
    redactor = FaceRedactor(margin=0.0)
    boxes = redactor.detector.detect(face)  # type: ignore[union-attr]
    assert boxes
    out = redactor.redact(face, boxes)
    x, y, w, h = boxes[0]
    region, original = out[y : y + h, x : x + w].astype(int), face[y : y + h, x : x + w].astype(int)
    # Fill is 128 plus noise, independent of the original: no correlation survives.
    assert abs(np.corrcoef(region.ravel(), original.ravel())[0, 1]) < 0.05
    assert np.all(np.abs(region - 128) <= redactor.noise)
    again = redactor.redact(face, boxes)[y : y + h, x : x + w]
    assert not np.array_equal(again, out[y : y + h, x : x + w]), "noise must be fresh per frame"


def test_no_face_survives_redaction_for_the_independent_detector(face: np.ndarray) -> None:
    assert independent_face_detector().detect(face)
    out, n = FaceRedactor().apply(face)
    assert n >= 1
    assert independent_face_detector().detect(out) == []


def test_whole_frame_pixelation_option(face: np.ndarray) -> None:
    out, _ = FaceRedactor(block=8).apply(face)
    assert np.array_equal(out[0:8, 0:8], np.broadcast_to(out[0, 0], (8, 8, 3)))


def test_detector_parameters_are_bounded() -> None:
    with pytest.raises(ConfigError):
        FaceDetector(scale_factor=1.0)
    with pytest.raises(ConfigError):
        FaceDetector(cascades=("no_such_cascade",))
    with pytest.raises(ConfigError):
        FaceRedactor(noise=500)


def test_people_count_and_presence_labels(face: np.ndarray) -> None:
    models = ImageModels()
    assert models.run("people-count", face) == 1
    assert models.run("presence", face) is True
    assert models.run("presence", np.full((240, 320, 3), 90, np.uint8)) is False
    with pytest.raises(ConfigError):
        models.run("emotion", face)


def test_voice_activity_label() -> None:
    speech = synthetic_corpus(speakers=1, per_digit=1, digits="5")[0].audio
    assert voice_activity(speech)
    quiet = Audio(0.001 * np.random.default_rng(0).standard_normal(8000), 8000)
    assert not voice_activity(quiet)
