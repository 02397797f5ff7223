"""Image privacy at capture: strict image codec, face detection, irreversible redaction, people counting.

Faces are found by a Viola-Jones cascade that ships inside the
``opencv-python-headless`` wheel (``frontalface_alt``; the cascade data is
under the Intel open-source licence bundled with OpenCV), run on the
equalised frame scaled down to 320 pixels wide (ADR 0950: about a fifth of
the CPU time of four passes) and again on the unequalised frame scaled down
to 160 (ADR 0954), and each face box, mapped back
to the full frame and enlarged by a margin, is **replaced** — filled with a
constant plus noise from the OS CSPRNG — before the frame is encoded.
Nothing of the original pixels survives in the box, unlike a blur, which
can be inverted or recognised through. An optional whole-frame step
(pixelation in blocks, in the spirit of CamPro) further removes identity
while keeping the silhouette of people.

*Independent* detectors (OpenCV's ``alt2`` and ``default`` frontal
cascades, which redaction does not use, at full resolution with a fine
pyramid) are what the evaluation uses to check that no face survived.
"""

from __future__ import annotations

import math
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import cv2 as _cv2
import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError, MalformedError

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "Box",
    "FaceDetector",
    "FaceRedactor",
    "PeopleCounter",
    "decode_image",
    "encode_image",
    "independent_face_detector",
    "pixelate",
    "scale_boxes",
]

# OpenCV's own type stubs model its arrays loosely; treat the module as untyped.
cv2: Any = _cv2
Frame = npt.NDArray[np.uint8]
Box = tuple[int, int, int, int]  # x, y, width, height

#: Encoded images larger than this are refused before decoding.
MAX_IMAGE_BYTES = 8 * 1024 * 1024
#: Images with more pixels than this are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 4096 * 4096
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _check_png_chunks(data: bytes) -> None:
    """Every chunk lies inside the buffer and IEND ends it exactly.

    OpenCV's PNG reader allocates gigabytes for some truncated chunk streams
    (a 60-byte input reached 4 GiB RSS under fuzzing), so a PNG is walked
    chunk by chunk before it reaches the decoder.
    """
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if end > len(data):
            raise MalformedError("PNG chunk runs past the end of the image", code="png_chunk_invalid")
        if data[pos + 4 : pos + 8] == b"IEND":
            if end != len(data):
                raise MalformedError("PNG has bytes after IEND", code="png_chunk_invalid")
            return
        pos = end
    raise MalformedError("PNG is truncated before IEND", code="png_chunk_invalid")


def _dimensions(data: bytes) -> tuple[int, int]:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise MalformedError("PNG lacks its IHDR header")
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                raise MalformedError("JPEG marker expected")
            marker = data[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            (size,) = struct.unpack(">H", data[pos + 2 : pos + 4])
            if marker in _SOF:
                if pos + 9 > len(data):
                    raise MalformedError("JPEG frame header is truncated")
                h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return int(w), int(h)
            if size < 2:
                raise MalformedError("JPEG segment length is invalid")
            pos += 2 + size
        raise MalformedError("JPEG has no frame header")
    raise MalformedError("image is neither PNG nor JPEG")


def decode_image(data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> Frame:
    """Decode a PNG or JPEG into a BGR frame, checking sizes before decoding.

    Raises:
        MalformedError: too large, not PNG/JPEG, too many pixels, or undecodable.
    """
    if len(data) > max_bytes:
        raise MalformedError(f"image exceeds {max_bytes} bytes")
    w, h = _dimensions(data)
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise MalformedError(f"image of {w}x{h} pixels is empty or exceeds {max_pixels} pixels")
    if data[:1] == b"\x89":
        _check_png_chunks(data)
    frame = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if frame is None or frame.shape[:2] != (h, w):
        raise MalformedError("image does not decode")
    out: Frame = frame
    return out


def encode_image(frame: Frame, codec: str = "png") -> bytes:
    """Encode a BGR frame as PNG (lossless) or JPEG.

    Raises:
        ConfigError: unknown codec.
    """
    if codec not in ("png", "jpeg"):
        raise ConfigError(f"unknown image codec {codec!r}")
    ok, buf = cv2.imencode(".png" if codec == "png" else ".jpg", frame)
    if not ok:
        raise ConfigError("the frame could not be encoded")
    return bytes(buf.tobytes())


def _cascade(name: str) -> Any:
    c = cv2.CascadeClassifier(str(cv2.data.haarcascades) + f"haarcascade_{name}.xml")
    if c.empty():
        raise ConfigError(f"face model {name!r} is missing from the OpenCV package")
    return c


@dataclass
class FaceDetector:
    """Viola-Jones face detection with OpenCV's bundled cascades.

    Args:
        cascades: Cascade names (``frontalface_alt``, ``profileface``, ...), each
            one detection pass (ADR 0950: one frontal pass is the default).
        mirror_profiles: Also run profile cascades on the mirrored frame
            (they are trained on one side only).
        scale_factor: Pyramid step; smaller finds more faces, slower.
        min_neighbors: Detections needed to accept a face; lower finds more
            (redaction prefers false alarms to misses; in two-band mode a lone
            hit gets a finer second pass around it).
        min_size: Smallest face side in pixels, at the detection width.
        detect_width: Frames wider than this are scaled down to it for
            detection (boxes are scaled back); 0 detects at full size.
        edge_pad: Pixels of replicated border added around the detection
            frame, so that faces touching the frame's edge are found.
        large_band: Faces more than twice ``min_size`` are searched on a copy
            of the detection frame scaled by this factor (ADR 0951); 1.0
            searches every size on the detection frame in one pass.
        keep_lone_hits: In two-band mode, a raw hit that no group covers is
            kept as a face as it is (ADR 0953: redaction prefers false alarms
            to misses); ``False`` keeps only what a finer second pass around
            it confirms (ADR 0951).
        plain_width: A second pass of the same cascades on the grey frame
            *without* histogram equalisation, scaled down to this width
            (ADR 0954: equalisation reveals some faces and hides others);
            0 runs no second pass.
    """

    cascades: tuple[str, ...] = ("frontalface_alt",)
    mirror_profiles: bool = True
    scale_factor: float = 1.1
    min_neighbors: int = 1
    min_size: int = 20
    detect_width: int = 320
    edge_pad: int = 4
    large_band: float = 0.75
    keep_lone_hits: bool = True
    plain_width: int = 160
    _models: list[tuple[str, Any]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if (not 1.01 <= self.scale_factor <= 2.0 or not 0 <= self.min_neighbors <= 20 or self.min_size < 8
                or not 0 <= self.edge_pad <= 64 or not 0.5 <= self.large_band <= 1.0 or self.plain_width < 0):
            raise ConfigError("face detector: scale_factor in [1.01, 2], min_neighbors in [0, 20], min_size >= 8, "
                              "edge_pad in [0, 64], large_band in [0.5, 1], plain_width >= 0")
        self._models = [(n, _cascade(n)) for n in self.cascades]

    def detect(self, frame: Frame) -> list[Box]:
        """Face boxes in ``frame``, in the frame's own pixel coordinates."""
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        boxes = self._pass(frame, cv2.equalizeHist(gray), self.detect_width)
        if self.plain_width:
            boxes += self._pass(frame, gray, self.plain_width)
        return boxes

    def _pass(self, frame: Frame, gray: Frame, detect_width: int) -> list[Box]:
        """Every cascade over ``gray`` scaled down to ``detect_width``; boxes in ``frame``'s coordinates."""
        scale = 1.0
        if detect_width and gray.shape[1] > detect_width:
            scale = gray.shape[1] / detect_width
            gray = cv2.resize(gray, (detect_width, round(gray.shape[0] / scale)), interpolation=cv2.INTER_AREA)
        pad = self.edge_pad
        if pad:
            # Replicated border: a face touching the frame's edge still fits a whole detection window.
            gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        width = gray.shape[1]
        boxes: list[Box] = []
        for name, model in self._models:
            views = [(gray, False)]
            if self.mirror_profiles and "profile" in name:
                views.append((cv2.flip(gray, 1), True))
            for view, mirrored in views:
                for x, y, w, h in self._search(model, view):
                    boxes.append(((int(width - x - w) if mirrored else int(x)) - pad, int(y) - pad, int(w), int(h)))
        return scale_boxes(boxes, scale, frame.shape[1], frame.shape[0])

    def _search(self, model: Any, view: Frame) -> list[Box]:
        """One cascade over one view: all sizes at once, or two size bands whose raw hits are grouped together.

        OpenCV slides its window two pixels at a time while the pyramid has
        shrunk the view less than twice and one pixel beyond, so faces over
        twice ``min_size`` cost as much as all smaller ones. They are
        searched on a copy scaled by ``large_band`` instead (a step of 2.7
        instead of 2 to 4 pixels of the view; ADR 0951).
        """
        small = self.min_size
        if self.large_band >= 1.0:
            found = model.detectMultiScale(view, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                           minSize=(small, small))
            return [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]
        hits = [(int(x), int(y), int(w), int(h)) for x, y, w, h in model.detectMultiScale(
            view, scaleFactor=self.scale_factor, minNeighbors=0, minSize=(small, small),
            maxSize=(2 * small + 1, 2 * small + 1))]
        k = self.large_band
        coarse = cv2.resize(view, (round(view.shape[1] * k), round(view.shape[0] * k)), interpolation=cv2.INTER_AREA)
        large = math.ceil(2 * small * k)
        if min(coarse.shape[:2]) >= large:
            for x, y, w, h in model.detectMultiScale(coarse, scaleFactor=self.scale_factor, minNeighbors=0,
                                                     minSize=(large, large)):
                hits.append((round(x / k), round(y / k), round(w / k), round(h / k)))
        if self.min_neighbors == 0 or not hits:
            return hits
        grouped, _ = cv2.groupRectangles([list(b) for b in hits], self.min_neighbors, 0.2)
        faces = [(int(x), int(y), int(w), int(h)) for x, y, w, h in grouped]
        for hit in hits:
            if not any(_centre_inside(hit, f) for f in faces):
                faces += [hit] if self.keep_lone_hits else self._verify(model, view, hit)
        return faces

    def _verify(self, model: Any, view: Frame, hit: Box) -> list[Box]:
        """A second, finer pass around a hit too lonely to be grouped (one scale step, one position)."""
        x, y, w, h = hit
        x0, y0 = max(0, x - w // 2), max(0, y - h // 2)
        roi = view[y0 : y + h + h // 2, x0 : x + w + w // 2]
        low, high = max(self.min_size, int(w * 0.7)), int(w * 1.5)
        if min(roi.shape[:2]) < low:
            return []
        found = model.detectMultiScale(roi, scaleFactor=1.05, minNeighbors=self.min_neighbors,
                                       minSize=(low, low), maxSize=(high, high))
        return [(int(fx) + x0, int(fy) + y0, int(fw), int(fh)) for fx, fy, fw, fh in found]


def scale_boxes(boxes: list[Box], scale: float, width: int, height: int) -> list[Box]:
    """Map boxes found on a frame scaled down by ``scale`` back to the full frame.

    The far edges are rounded outwards (a box never shrinks in the mapping)
    and clipped to the ``width`` x ``height`` frame.
    """
    out: list[Box] = []
    for x, y, w, h in boxes:
        x0, y0 = max(0, math.floor(x * scale)), max(0, math.floor(y * scale))
        x1, y1 = min(width, math.ceil((x + w) * scale)), min(height, math.ceil((y + h) * scale))
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1 - x0, y1 - y0))
    return out


def independent_face_detector(cascade: str = "frontalface_alt2") -> FaceDetector:
    """An evaluation detector: a cascade redaction does not use, at full resolution with fine scale steps.

    ``frontalface_alt2`` (the default) and ``frontalface_default`` are the two
    the evaluation runs; redaction uses ``frontalface_alt`` on a frame scaled
    down to 320 pixels.
    """
    return FaceDetector(cascades=(cascade,), mirror_profiles=False, scale_factor=1.05,
                        min_neighbors=3, min_size=20, detect_width=0, edge_pad=0, large_band=1.0,
                        plain_width=0)


@dataclass
class FaceRedactor:
    """Irreversible face redaction before encoding (``face-redact``).

    Args:
        margin: Each face box grows by this fraction of its size on every side
            (hair, ears and chin identify people too).
        noise: Amplitude of the uniform noise added to the constant fill.
        block: Whole-frame pixelation block in pixels (0: off), the optional
            identity-degrading step that keeps people's silhouettes.
        detector: Face detector (default: :class:`FaceDetector`).
        seed: Only for tests: a fixed noise seed; ``None`` uses the OS CSPRNG.
    """

    margin: float = 0.5
    noise: int = 48
    block: int = 0
    detector: FaceDetector | None = None
    seed: int | None = None
    name: str = "face-redact"

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 1.0 or not 0 <= self.noise <= 127 or not 0 <= self.block <= 64:
            raise ConfigError("face-redact: margin in [0, 1], noise in [0, 127], block in [0, 64]")
        if self.detector is None:
            self.detector = FaceDetector()

    def params(self) -> dict[str, Any]:
        """Method, version and parameters as recorded in privacy receipts."""
        assert self.detector is not None
        return {"method": self.name, "version": 6, "detectors": list(self.detector.cascades),
                "detect_width": self.detector.detect_width, "plain_width": self.detector.plain_width,
                "large_band": self.detector.large_band,
                "keep_lone_hits": self.detector.keep_lone_hits,
                "margin": self.margin, "noise": self.noise, "block": self.block, "fill": "constant+noise"}

    def redact(self, frame: Frame, boxes: list[Box]) -> Frame:
        """A copy of ``frame`` with every box (plus margin) replaced by fill and noise."""
        rng = np.random.default_rng(self.seed if self.seed is not None else secrets.randbits(128))
        out = frame.copy()
        fh, fw = out.shape[:2]
        for x, y, w, h in boxes:
            dx, dy = int(w * self.margin), int(h * self.margin)
            x0, y0, x1, y1 = max(0, x - dx), max(0, y - dy), min(fw, x + w + dx), min(fh, y + h + dy)
            shape = (y1 - y0, x1 - x0, *out.shape[2:])
            out[y0:y1, x0:x1] = rng.integers(128 - self.noise, 128 + self.noise + 1, size=shape, dtype=np.uint8)
        return out

    def apply(self, frame: Frame) -> tuple[Frame, int]:
        """Detect and redact faces, then the optional whole-frame step; returns the frame and the face count."""
        assert self.detector is not None
        boxes = self.detector.detect(frame)
        out = self.redact(frame, boxes)
        return pixelate(out, self.block), len(boxes)


def pixelate(frame: Frame, block: int) -> Frame:
    """The whole-frame identity-degrading step: each ``block`` x ``block`` cell becomes its mean (1 or 0: unchanged)."""
    if block <= 1:
        return frame
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA)
    out: Frame = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    return out


def _merge(boxes: list[Box], overlap: float = 0.3) -> list[Box]:
    kept: list[Box] = []
    for b in sorted(boxes, key=lambda b: -b[2] * b[3]):
        bx, by, bw, bh = b
        if all(_iou(b, k) < overlap and not _inside(b, k) for k in kept):
            kept.append((bx, by, bw, bh))
    return kept


def _iou(a: Box, b: Box) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0, min(ax1, bx1) - max(a[0], b[0])), max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def _centre_inside(a: Box, b: Box) -> bool:
    cx, cy = a[0] + a[2] / 2, a[1] + a[3] / 2
    return b[0] <= cx <= b[0] + b[2] and b[1] <= cy <= b[1] + b[3]


def _inside(a: Box, b: Box) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


@dataclass
class PeopleCounter:
    """Device-side people counting: full bodies (HOG, Dalal-Triggs) and, optionally, faces not inside a body.

    The ``people-count`` and ``presence`` labels run on the original frame on
    the device, where faces help with people seen from the shoulders up; only
    the count (or presence) leaves the device. ``faces=None`` counts bodies
    only, which does not depend on faces: that is the detector the evaluation
    runs on redacted frames (redaction removes faces by design).

    Args:
        faces: Face detector whose faces outside every body count as people
            (``None``: bodies only). It asks for three neighbouring detections,
            where redaction asks for one: a counter must not count false alarms.
        scale: HOG pyramid step; smaller finds more people, slower.
        hit_threshold: HOG SVM margin a window needs to count as a person.
    """

    faces: FaceDetector | None = field(
        default_factory=lambda: FaceDetector(min_neighbors=3, large_band=1.0, plain_width=0))
    scale: float = 1.05
    hit_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not 1.01 <= self.scale <= 2.0 or not -1.0 <= self.hit_threshold <= 3.0:
            raise ConfigError("people counter: scale in [1.01, 2], hit_threshold in [-1, 3]")
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def bodies(self, frame: Frame) -> list[Box]:
        """Full-body boxes (people at least about 128 pixels tall), overlapping hits merged."""
        rects, _ = self._hog.detectMultiScale(frame, hitThreshold=self.hit_threshold, winStride=(8, 8),
                                              padding=(8, 8), scale=self.scale)
        return _merge([(int(x), int(y), int(w), int(h)) for x, y, w, h in rects])

    def boxes(self, frame: Frame) -> list[Box]:
        """Person boxes: body boxes, plus a face box for each face not inside a body."""
        bodies = self.bodies(frame)
        if self.faces is None:
            return bodies
        faces = [f for f in _merge(self.faces.detect(frame)) if not any(_inside(f, b) for b in bodies)]
        return bodies + faces

    def count(self, frame: Frame) -> int:
        """How many people are in view."""
        return len(self.boxes(frame))
