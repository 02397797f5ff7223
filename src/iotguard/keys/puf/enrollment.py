"""Enrollment checks: refuse a PUF whose helper data would give its key away.

The code-offset fuzzy extractor publishes ``offset = w XOR C(s)``. Its
security argument (ADR 0502, ADR 0503) assumes the response bits ``w`` are
independent and close to unbiased. With the repetition inner code every
group of ``r`` offset bits is either ``w``'s group or its complement, so on a
biased PUF the offset alone says which one: at a uniformity of 0.75 the
plain decoder, fed a constant response, reconstructs the key from the public
helper data in about one device of seven (:func:`helper_data_only_attack`).

Enrollment therefore measures, over its power-up reads:

* **uniformity** (fraction of ones of the majority reference) and from it a
  lower bound on the key's min-entropy given the helper data: per repetition
  group, the average min-entropy of the codeword bit given the group's
  offset bits, summed over groups, minus the BCH parity bits (conditioning
  on "``C`` is a codeword", an event of probability ``2^-parity`` under the
  independent-bits prior, costs at most that many bits). Refused below
  :attr:`PufEnrollmentLimits.min_key_entropy_bits` (128);
* **independence within repetition groups**: the fraction of equal
  neighbouring bits inside groups against its value for independent bits at
  the measured bias (a z-score); correlated cells void the bound above;
* **bit-error rate** of the single reads against the reference: the key
  failure-rate argument (1e-6 at 15 %) holds only for a PUF within it.

All three are results (:class:`PufEnrollmentAssessment`) and a check that
raises :class:`~iotguard.errors.PufQualityError` naming the failed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb, log2, sqrt

import numpy as np
import numpy.typing as npt

from iotguard.errors import KeyStoreError, PufQualityError
from iotguard.keys.puf.fuzzy import FuzzyExtractor, FuzzyExtractorParameters, HelperData

__all__ = [
    "PufEnrollmentAssessment",
    "PufEnrollmentLimits",
    "assess_enrollment",
    "checked_enrollment_reference",
    "helper_data_only_attack",
    "key_entropy_bound",
]

Bits = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class PufEnrollmentLimits:
    """What a PUF must show at enrollment.

    Attributes:
        min_key_entropy_bits: Lower bound on the key's min-entropy given the
            public helper data, under the measured bias.
        max_correlation_z: Largest z-score of within-group neighbour
            agreement above the independent-bits expectation.
        max_bit_error_rate: Largest mean bit-error rate of one read against
            the enrollment reference (the reliability the code is sized for).
    """

    min_key_entropy_bits: float = 128.0
    max_correlation_z: float = 5.0
    max_bit_error_rate: float = 0.15


@dataclass(frozen=True)
class PufEnrollmentAssessment:
    """Measurements of one enrollment (all derived from public statistics, no response bits)."""

    reads: int
    uniformity: float
    key_entropy_bits: float
    neighbour_agreement: float
    correlation_z: float
    bit_error_rate: float

    def check(self, limits: PufEnrollmentLimits) -> None:
        """Raise if this enrollment would leave the key exposed or unreliable.

        Raises:
            PufQualityError: biased (key entropy below the floor), correlated,
                or too noisy; the message names the measurement.
        """
        if self.key_entropy_bits < limits.min_key_entropy_bits:
            raise PufQualityError(
                f"PUF refused: uniformity {self.uniformity:.3f} leaves at most "
                f"{max(self.key_entropy_bits, 0.0):.0f} bits of key entropy given the helper data "
                f"(need {limits.min_key_entropy_bits:.0f})"
            )
        if self.correlation_z > limits.max_correlation_z:
            raise PufQualityError(
                f"PUF refused: neighbouring cells agree {self.neighbour_agreement:.3f} of the time "
                f"(z = {self.correlation_z:.1f} above independent cells)"
            )
        if self.bit_error_rate > limits.max_bit_error_rate:
            raise PufQualityError(
                f"PUF refused: bit-error rate {self.bit_error_rate:.3f} at enrollment "
                f"exceeds {limits.max_bit_error_rate:.2f}"
            )


def _group_min_entropy(p_one: float, r: int) -> float:
    """Average min-entropy (bits) of one repetition group's codeword bit given its offset bits."""
    q = 1.0 - p_one
    guess = 0.5 * sum(
        comb(r, k) * max(p_one**k * q ** (r - k), p_one ** (r - k) * q**k) for k in range(r + 1)
    )
    return -log2(guess)


def key_entropy_bound(uniformity: float, params: FuzzyExtractorParameters | None = None) -> float:
    """Lower bound (bits) on the key's min-entropy given the helper data, for independent bits.

    ``blocks * codeword_bits`` groups each keep :func:`_group_min_entropy`
    bits; the BCH parity (``blocks * ecc_bits``) is subtracted; the result
    never exceeds the message length. Negative means the bound gives nothing.
    """
    p = params or FuzzyExtractorParameters()
    groups = p.blocks * p.codeword_bits
    bound = groups * _group_min_entropy(min(max(uniformity, 0.0), 1.0), p.repetition) - p.blocks * p.ecc_bits
    return float(min(bound, p.message_bits))


def assess_enrollment(
    reads: Bits, params: FuzzyExtractorParameters | None = None
) -> tuple[Bits, PufEnrollmentAssessment]:
    """Majority reference and measurements of ``reads`` (shape ``(m, n)``, ``m`` odd).

    Raises:
        KeyStoreError: an even number of reads, or responses too short for the code.
    """
    p = params or FuzzyExtractorParameters()
    m = int(reads.shape[0])
    if reads.ndim != 2 or m < 1 or m % 2 == 0:
        raise KeyStoreError("enrollment needs an odd number of reads")
    if reads.shape[1] < p.response_bits:
        raise KeyStoreError(f"PUF response too short: need {p.response_bits} bits")
    used = np.asarray(reads[:, : p.response_bits], dtype=np.uint8)
    reference: Bits = (used.sum(axis=0) > m // 2).astype(np.uint8)
    uniformity = float(reference.mean())
    groups = reference.reshape(-1, p.repetition)
    agree = groups[:, 1:] == groups[:, :-1]
    observed = float(agree.mean())
    expected = uniformity**2 + (1.0 - uniformity) ** 2
    sd = sqrt(max(expected * (1.0 - expected), 1e-12) / agree.size)
    ber = float((used != reference[None]).mean()) if m > 1 else 0.0
    return reference, PufEnrollmentAssessment(
        reads=m,
        uniformity=uniformity,
        key_entropy_bits=key_entropy_bound(max(uniformity, 1.0 - uniformity), p),
        neighbour_agreement=observed,
        correlation_z=(observed - expected) / sd,
        bit_error_rate=ber,
    )


def checked_enrollment_reference(
    reads: Bits, params: FuzzyExtractorParameters | None = None, limits: PufEnrollmentLimits | None = None
) -> tuple[Bits, PufEnrollmentAssessment]:
    """The enrollment reference of ``reads``, after the checks pass.

    Raises:
        PufQualityError: the PUF is biased, correlated or too noisy.
        KeyStoreError: an even number of reads, or responses too short.
    """
    reference, assessment = assess_enrollment(reads, params)
    assessment.check(limits or PufEnrollmentLimits())
    return reference, assessment


def helper_data_only_attack(helper: HelperData, *, context: bytes = b"") -> bytes | None:
    """Try to recover the key from the public helper data alone (no PUF access).

    On a biased PUF most response bits equal the majority value, so a
    constant response is a noisy copy of the enrolled one; the extractor's
    own decoder removes the rest of the noise. Returns the key, or ``None``
    if neither constant response reconstructs it. Used to show what the
    enrollment checks prevent.
    """
    fe = FuzzyExtractor(helper.params)
    for bit in (1, 0):
        try:
            return fe.reproduce(np.full(helper.params.response_bits, bit, dtype=np.uint8), helper, context=context)
        except KeyStoreError:
            continue
    return None
