"""Monte-Carlo evidence for the fuzzy extractor's key-failure rate.

A failure rate of 1e-6 cannot be *observed* with a few thousand trials, so
the evidence has three parts (``docs/keys.md`` explains them):

1. **Inner code, direct simulation** — millions of repetition groups at the
   design bit-error rate measure the majority-vote error rate ``p_inner``
   with a tight confidence interval (:func:`measure_inner_error_rate`).
2. **Outer code, importance sampling** — BCH blocks are corrupted at a
   tilted error rate ``q`` near the decoding radius, decoded by the *real*
   bchlib decoder, and each failure is weighted by the likelihood ratio
   ``(p/q)^K ((1-p)/(1-q))^(n-K)``; this is an unbiased estimate of the block
   failure probability at ``p_inner`` that needs only thousands of decodes
   (:func:`importance_sampled_block_failure`).
3. **Whole pipeline at higher error rates** — where failures are frequent
   enough to count, full ``generate``/``reproduce`` runs are compared with the
   analytic curve (:func:`simulate_key_failures`), which validates the model
   that parts 1-2 extrapolate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import bchlib
import numpy as np

from iotguard.keys.puf.fuzzy import (
    FuzzyExtractor,
    block_failure_probability,
    key_failure_probability,
    repetition_error_probability,
)

__all__ = [
    "FailureRateEvidence",
    "failure_rate_evidence",
    "importance_sampled_block_failure",
    "measure_inner_error_rate",
    "simulate_key_failures",
]


def measure_inner_error_rate(
    ber: float, groups: int, repetition: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Simulate ``groups`` repetition groups at ``ber``; returns (estimate, 95 % upper bound)."""
    errors = 0
    chunk = 1_000_000
    done = 0
    while done < groups:
        n = min(chunk, groups - done)
        flips = rng.random((n, repetition), dtype=np.float32) < ber
        errors += int((flips.sum(axis=1) > repetition // 2).sum())
        done += n
    est = errors / groups
    upper = est + 1.96 * math.sqrt(max(est * (1 - est), 1.0 / groups) / groups)
    return est, upper


def importance_sampled_block_failure(
    inner_error: float, samples: int, extractor: FuzzyExtractor, rng: np.random.Generator
) -> tuple[float, float]:
    """Importance-sampled failure probability of one BCH block; returns (estimate, standard error).

    Error patterns are drawn at ``q = (t + 1.5) / n`` and decoded by bchlib;
    failures (decode error or miscorrection) are weighted back to ``inner_error``.
    """
    p = extractor.params
    n = p.codeword_bits
    q = min(0.5, (p.bch_t + 1.5) / n)
    bch = bchlib.BCH(p.bch_t, m=p.bch_m)
    data = rng.integers(0, 256, p.bch_data_bytes, dtype=np.uint8).tobytes()
    ecc = bytes(bch.encode(data))
    pad = 8 * (p.bch_data_bytes + bch.ecc_bytes) - n
    clean = np.unpackbits(np.frombuffer(data + ecc, dtype=np.uint8))[:n]
    patterns = (rng.random((samples, n)) < q).astype(np.uint8)
    k = patterns.sum(axis=1)
    log_w = k * math.log(inner_error / q) + (n - k) * math.log((1 - inner_error) / (1 - q))
    weights = np.zeros(samples)
    for i in np.nonzero(k > 0)[0]:
        noisy = np.packbits(np.concatenate([clean ^ patterns[i], np.zeros(pad, dtype=np.uint8)])).tobytes()
        d = bytearray(noisy[: p.bch_data_bytes])
        e = bytearray(noisy[p.bch_data_bytes :])
        if bch.decode(d, e) >= 0:
            bch.correct(d, e)
            if bytes(d) == data:
                continue
        weights[i] = math.exp(log_w[i])
    return float(weights.mean()), float(weights.std() / math.sqrt(samples))


def simulate_key_failures(
    ber: float, trials: int, extractor: FuzzyExtractor, rng: np.random.Generator
) -> int:
    """Full enrollment + reconstruction with i.i.d. bit errors at ``ber``; returns the failure count."""
    p = extractor.params
    w = rng.integers(0, 2, p.response_bits, dtype=np.uint8)
    message = rng.integers(0, 256, p.blocks * p.bch_data_bytes, dtype=np.uint8).tobytes()
    _, helper = extractor.generate(w, message=message)
    offset = np.unpackbits(np.frombuffer(helper.offset, dtype=np.uint8))[: p.response_bits]
    failures = 0
    batch = 2000
    for start in range(0, trials, batch):
        n = min(batch, trials - start)
        noisy = w[None] ^ (rng.random((n, p.response_bits), dtype=np.float32) < ber).astype(np.uint8)
        inner = extractor.decode_inner(noisy ^ offset[None])
        for row in inner:
            if extractor.decode_outer(row) != message:
                failures += 1
    return failures


@dataclass(frozen=True)
class FailureRateEvidence:
    """The three-part evidence for the key-failure rate at ``ber``.

    Attributes:
        ber: Design bit-error rate.
        analytic: Analytic key-failure probability at ``ber``.
        inner_measured: Measured repetition-group error rate (and 95 % upper bound).
        inner_analytic: Analytic repetition-group error rate.
        block_importance_sampled: Importance-sampled BCH block failure at the measured inner rate.
        block_standard_error: Its standard error.
        key_measured: Key-failure estimate from the two measured parts.
        key_upper: Conservative bound: at the 95 % upper inner rate, the larger of
            importance sampling + 2 standard errors and the analytic block tail.
        validation: Rows ``(ber, trials, failures, analytic)`` of whole-pipeline runs.
    """

    ber: float
    analytic: float
    inner_measured: float
    inner_upper: float
    inner_analytic: float
    block_importance_sampled: float
    block_standard_error: float
    key_measured: float
    key_upper: float
    validation: tuple[tuple[float, int, int, float], ...]


def failure_rate_evidence(
    extractor: FuzzyExtractor,
    rng: np.random.Generator,
    *,
    ber: float = 0.15,
    inner_groups: int = 2_000_000,
    block_samples: int = 20_000,
    validation_bers: tuple[float, ...] = (0.20, 0.22, 0.24),
    validation_trials: int = 4_000,
) -> FailureRateEvidence:
    """Gather all three parts of the evidence (a few seconds with the defaults)."""
    p = extractor.params
    inner, inner_up = measure_inner_error_rate(ber, inner_groups, p.repetition, rng)
    block, block_se = importance_sampled_block_failure(inner, block_samples, extractor, rng)
    key = -math.expm1(p.blocks * math.log1p(-min(block, 0.999999)))
    block_at_upper, se_at_upper = importance_sampled_block_failure(inner_up, block_samples, extractor, rng)
    block_up = max(
        block_at_upper + 2 * se_at_upper,
        block_failure_probability(inner_up, p.codeword_bits, p.bch_t),
    )
    key_up = -math.expm1(p.blocks * math.log1p(-min(block_up, 0.999999)))
    rows = tuple(
        (
            b,
            validation_trials,
            simulate_key_failures(b, validation_trials, extractor, rng),
            key_failure_probability(b, p),
        )
        for b in validation_bers
    )
    return FailureRateEvidence(
        ber=ber,
        analytic=key_failure_probability(ber, p),
        inner_measured=inner,
        inner_upper=inner_up,
        inner_analytic=repetition_error_probability(ber, p.repetition),
        block_importance_sampled=block,
        block_standard_error=block_se,
        key_measured=key,
        key_upper=key_up,
        validation=rows,
    )
