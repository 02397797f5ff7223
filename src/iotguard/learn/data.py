"""Training tasks: spoken-digit features, a generated stand-in, and non-IID partitions.

:func:`digit_features` turns one recording (an
:class:`~iotguard.media.audio.Audio`) into a fixed-length vector: the mean
and standard deviation of its MFCCs with deltas over three equal time
thirds (``3 * 2 * 40 = 240`` values). That is the features the Free Spoken
Digit Dataset task of ``bench/learn.py`` trains on, one speaker's
recordings on each group of devices (non-IID by speaker).

Tests do not read that data set: :func:`synthetic_digits` generates a
classification task of the same shape (Gaussian class clusters with a
per-speaker shift, so partitions by speaker are non-IID), and
:func:`synthetic_recording` makes a short tone-like recording per digit to
exercise the feature path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError

if TYPE_CHECKING:
    from iotguard.media.audio import Audio

__all__ = ["DIGIT_FEATURES", "Dataset", "digit_features", "partition", "pooled", "split_train_test", "standardise",
           "synthetic_digits", "synthetic_recording"]

Array = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int64]
DIGIT_FEATURES = 240
_SEGMENTS = 3


@dataclass(frozen=True)
class Dataset:
    """Rows ``x``, labels ``y`` and the group (speaker / site) each row belongs to."""

    x: Array
    y: Labels
    group: npt.NDArray[np.int64]

    def subset(self, idx: npt.NDArray[np.int64]) -> Dataset:
        """The rows at ``idx``."""
        return Dataset(self.x[idx], self.y[idx], self.group[idx])


def digit_features(audio: Audio) -> Array:
    """Fixed-length MFCC summary of one recording (:data:`DIGIT_FEATURES` values)."""
    from iotguard.media.audio import mfcc  # the media stack (SciPy, OpenCV) only where audio is featurised

    c = mfcc(audio, coefficients=20, deltas=True)
    parts = np.array_split(c, _SEGMENTS, axis=0) if len(c) >= _SEGMENTS else [c] * _SEGMENTS
    return np.concatenate([np.concatenate([p.mean(axis=0), p.std(axis=0)]) for p in parts])


def standardise(train: Array, *others: Array) -> tuple[Array, ...]:
    """Scale every column to zero mean, unit variance using ``train``'s statistics."""
    mu, sd = train.mean(axis=0), train.std(axis=0) + 1e-8
    return tuple((a - mu) / sd for a in (train, *others))


def synthetic_recording(digit: int, speaker: int, rng: np.random.Generator, rate: int = 8000) -> Audio:
    """A half-second two-tone recording whose pitch pattern depends on ``digit`` (and a little on ``speaker``)."""
    from iotguard.media.audio import Audio

    t = np.arange(int(0.5 * rate)) / rate
    f1, f2 = 300.0 + 120.0 * digit + 15.0 * speaker, 900.0 + 90.0 * ((digit * 7) % 10)
    half = len(t) // 2
    x = np.concatenate([np.sin(2 * np.pi * f1 * t[:half]), np.sin(2 * np.pi * f2 * t[half:])])
    return Audio(0.4 * x + 0.02 * rng.standard_normal(len(t)), rate)


def synthetic_digits(*, speakers: int = 6, per_class: int = 20, classes: int = 10, features: int = 24,
                     seed: int = 0, speaker_shift: float = 0.6, spread: float = 1.2) -> Dataset:
    """Gaussian class clusters, each speaker shifted by its own offset (non-IID by speaker)."""
    if speakers < 1 or per_class < 1 or classes < 2 or features < 1:
        raise ConfigError("synthetic task needs speakers, rows, two classes, features")
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (classes, features))
    xs, ys, gs = [], [], []
    for s in range(speakers):
        shift = rng.normal(0.0, speaker_shift, features)
        for c in range(classes):
            xs.append(centres[c] + shift + rng.normal(0.0, spread, (per_class, features)))
            ys.append(np.full(per_class, c))
            gs.append(np.full(per_class, s))
    return Dataset(np.vstack(xs), np.concatenate(ys).astype(np.int64), np.concatenate(gs).astype(np.int64))


def partition(data: Dataset, devices_per_group: int, seed: int = 0) -> list[Dataset]:
    """Split each group's rows across ``devices_per_group`` devices (non-IID: a device holds one group)."""
    if devices_per_group < 1:
        raise ConfigError("devices_per_group must be >= 1")
    rng = np.random.default_rng(seed)
    out: list[Dataset] = []
    for g in np.unique(data.group):
        idx = rng.permutation(np.flatnonzero(data.group == g))
        out.extend(data.subset(part.astype(np.int64)) for part in np.array_split(idx, devices_per_group))
    return out


def split_train_test(data: Dataset, test_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Stratified-by-group random split."""
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(data.y), dtype=bool)
    for g in np.unique(data.group):
        idx = rng.permutation(np.flatnonzero(data.group == g))
        test_mask[idx[:round(test_fraction * len(idx))]] = True
    return data.subset(np.flatnonzero(~test_mask)), data.subset(np.flatnonzero(test_mask))


def pooled(parts: Sequence[Dataset]) -> Dataset:
    """All parts as one data set (centralised baseline)."""
    return Dataset(np.vstack([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                   np.concatenate([p.group for p in parts]))
