"""PUF quality metrics as defined by Maiti, Gunreddy and Schaumont.

"A Systematic Method to Evaluate and Compare the Performance of Physical
Unclonable Functions" (2011) defines, for ``k`` devices with ``n``-bit
responses (all values here are fractions; the paper prints percentages):

* **uniqueness** — mean pairwise inter-device Hamming distance
  ``2/(k(k-1)) * sum_{i<j} HD(R_i, R_j) / n``; ideal 0.5;
* **reliability** — ``1 - mean_t HD(R_i, R_i,t) / n`` per device, the
  agreement of later reads with the enrollment reference; ideal 1.0;
* **uniformity** — fraction of ones in one device's response; ideal 0.5;
* **bit-aliasing** — fraction of devices answering 1 at one bit position;
  ideal 0.5 for every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["PufQuality", "bit_aliasing", "quality", "reliability", "uniformity", "uniqueness"]

Bits = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float64]


def uniqueness(references: Bits) -> float:
    """Mean pairwise fractional Hamming distance between devices' responses ``(k, n)``.

    Raises:
        ValueError: fewer than two devices.
    """
    k, n = references.shape
    if k < 2:
        raise ValueError("uniqueness needs at least two devices")
    r = references.astype(np.float32)
    ones = r.sum(axis=1, dtype=np.float64)
    # HD(i, j) = |R_i| + |R_j| - 2 R_i . R_j, summed over i < j.
    gram = float(np.triu(r @ r.T, 1).sum(dtype=np.float64))
    pair_ones = float((k - 1) * ones.sum())
    total_hd = pair_ones - 2.0 * gram
    return float(total_hd / (k * (k - 1) / 2) / n)


def reliability(references: Bits, reads: Bits) -> Floats:
    """Per-device reliability: ``references`` ``(k, n)`` against ``reads`` ``(m, k, n)``."""
    hd = (reads != references[None]).mean(axis=2)
    out: Floats = 1.0 - hd.mean(axis=0)
    return out


def uniformity(responses: Bits) -> Floats:
    """Per-device fraction of ones of ``responses`` ``(k, n)``."""
    out: Floats = responses.mean(axis=1, dtype=np.float64)
    return out


def bit_aliasing(responses: Bits) -> Floats:
    """Per-bit-position fraction of devices answering one, for ``responses`` ``(k, n)``."""
    out: Floats = responses.mean(axis=0, dtype=np.float64)
    return out


@dataclass(frozen=True)
class PufQuality:
    """Summary of the four metrics over a population (all fractions)."""

    devices: int
    bits: int
    uniqueness: float
    reliability_mean: float
    reliability_min: float
    uniformity_mean: float
    uniformity_std: float
    bit_aliasing_mean: float
    bit_aliasing_min: float
    bit_aliasing_max: float

    def as_dict(self) -> dict[str, float | int]:
        """Plain mapping for JSON output."""
        return dict(self.__dict__)


def quality(references: Bits, reads: Bits) -> PufQuality:
    """All four metrics: enrollment ``references`` ``(k, n)`` and later ``reads`` ``(m, k, n)``."""
    rel = reliability(references, reads)
    uni = uniformity(references)
    alias = bit_aliasing(references)
    return PufQuality(
        devices=int(references.shape[0]),
        bits=int(references.shape[1]),
        uniqueness=uniqueness(references),
        reliability_mean=float(rel.mean()),
        reliability_min=float(rel.min()),
        uniformity_mean=float(uni.mean()),
        uniformity_std=float(uni.std()),
        bit_aliasing_mean=float(alias.mean()),
        bit_aliasing_min=float(alias.min()),
        bit_aliasing_max=float(alias.max()),
    )
