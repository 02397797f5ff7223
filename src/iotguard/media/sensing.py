"""Inference-only sensing ("machine-learning sensors", Warden et al. 2023).

A device-side model turns a clip or a frame into a label — voice activity,
a spoken digit, a people count, presence — and only that label is sealed
and sent; the media itself never leaves the device. Each model has a name
the data contract refers to (``[purposes.P.media.S] model = "..."``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from iotguard.errors import ConfigError
from iotguard.media.attacker import DigitRecogniser
from iotguard.media.audio import Audio, frames
from iotguard.media.image import Frame, PeopleCounter

__all__ = ["AudioModels", "ImageModels", "voice_activity"]


def voice_activity(audio: Audio, *, threshold_db: float = -35.0, min_ms: int = 60) -> bool:
    """Whether someone speaks in ``audio``: enough 20 ms frames above an energy
    threshold (relative to full scale) with a speech-like zero-crossing rate."""
    length = int(0.02 * audio.rate)
    f = frames(audio.samples, length, length)
    rms = np.sqrt((f * f).mean(axis=1) + 1e-12)
    zcr = (np.abs(np.diff(np.sign(f), axis=1)) > 0).mean(axis=1)
    active = (20 * np.log10(rms) > threshold_db) & (zcr < 0.5)
    return bool(active.sum() * 20 >= min_ms)


@dataclass
class AudioModels:
    """The device's audio models by contract name.

    Args:
        digits: A trained spoken-digit recogniser; without one the
            ``spoken-digit`` model is unavailable (configuration error).
    """

    digits: DigitRecogniser | None = None

    def run(self, model: str, audio: Audio) -> bool | str:
        """Run the named model on a clip and return its label.

        Raises:
            ConfigError: unknown model, or no trained recogniser for ``spoken-digit``.
        """
        if model == "voice-activity":
            return voice_activity(audio)
        if model == "spoken-digit":
            if self.digits is None or not self.digits.fitted:
                raise ConfigError("the spoken-digit model is not installed on this device")
            return self.digits.predict(audio)
        raise ConfigError(f"unknown audio model {model!r}")


@dataclass
class ImageModels:
    """The device's image models by contract name."""

    counter: PeopleCounter = field(default_factory=PeopleCounter)

    def run(self, model: str, frame: Frame) -> int | bool:
        """Run the named model on a frame and return its label.

        Raises:
            ConfigError: unknown model.
        """
        if model == "people-count":
            return self.counter.count(frame)
        if model == "presence":
            return self.counter.count(frame) > 0
        raise ConfigError(f"unknown image model {model!r}")
