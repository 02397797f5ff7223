"""The image attacker: re-identify a face by matching it against a gallery of enrolled faces.

The attacker crops the region where a person's face is (it is told where,
the strongest position), describes it by a histogram of oriented gradients
and a normalised thumbnail, and names the gallery entry with the most
similar description (cosine similarity, top-1). Before redaction this links
a frame to the enrolled photo; after redaction it should do no better than
chance (one over the gallery size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError
from iotguard.media.image import Box, Frame, cv2

__all__ = ["FaceMatcher", "crop", "face_signature"]

_SIDE = 32


def crop(frame: Frame, box: Box) -> Frame:
    """The part of ``frame`` inside ``box`` (clipped to the frame).

    Raises:
        ConfigError: the box lies outside the frame.
    """
    x, y, w, h = box
    fh, fw = frame.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(fw, x + w), min(fh, y + h)
    if x1 <= x0 or y1 <= y0:
        raise ConfigError(f"box {box} lies outside the {fw}x{fh} frame")
    out: Frame = frame[y0:y1, x0:x1]
    return out


def face_signature(face: Frame) -> npt.NDArray[np.float64]:
    """A unit-length description of a face crop: HOG of a 32x32 thumbnail plus the 16x16 thumbnail itself."""
    gray = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) if face.ndim == 3 else face
    thumb = cv2.equalizeHist(cv2.resize(gray, (_SIDE, _SIDE), interpolation=cv2.INTER_AREA))
    descriptor = cv2.HOGDescriptor((_SIDE, _SIDE), (16, 16), (8, 8), (8, 8), 9)
    hog = np.asarray(descriptor.compute(thumb), dtype=np.float64).ravel()
    small = cv2.resize(thumb, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    small -= small.mean()
    parts = [v / (np.linalg.norm(v) + 1e-9) for v in (hog, small)]
    sig = np.concatenate(parts)
    out: npt.NDArray[np.float64] = sig / (np.linalg.norm(sig) + 1e-9)
    return out


@dataclass
class FaceMatcher:
    """Nearest-neighbour face identification against an enrolled gallery (one face per identity)."""

    _gallery: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)), repr=False)

    def enrol(self, faces: Sequence[Frame]) -> None:
        """Enrol one face crop per identity; identity ``i`` is ``faces[i]``.

        Raises:
            ConfigError: fewer than two faces (identification needs a choice).
        """
        if len(faces) < 2:
            raise ConfigError("re-identification needs a gallery of at least two faces")
        self._gallery = np.stack([face_signature(f) for f in faces])

    @property
    def size(self) -> int:
        """Identities enrolled."""
        return int(self._gallery.shape[0])

    def identify(self, face: Frame) -> int:
        """The gallery index most similar to ``face``.

        Raises:
            ConfigError: nothing enrolled.
        """
        if self.size == 0:
            raise ConfigError("no gallery enrolled")
        return int(np.argmax(self._gallery @ face_signature(face)))

    def top1(self, faces: Sequence[Frame], identities: Sequence[int]) -> float:
        """Fraction of ``faces`` identified as their true gallery index."""
        if not faces:
            return 0.0
        hits = sum(self.identify(f) == i for f, i in zip(faces, identities, strict=True))
        return hits / len(faces)
