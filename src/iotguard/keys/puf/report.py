"""The PUF population report behind ``iotguard puf report``.

A simulated batch of SRAM PUF devices is enrolled at the nominal corner
(majority of nine power-up reads, fuzzy-extractor enrollment), then read at
every operating corner. The report gives the Maiti et al. quality metrics,
the bit-error rate per corner, the key-reconstruction failures counted over
the whole population, the three-part failure-rate evidence at the 15 %
design point, and the modelling attack on arbiter PUFs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from iotguard.keys.puf.analysis import FailureRateEvidence, failure_rate_evidence
from iotguard.keys.puf.arbiter import ArbiterPuf, XorArbiterPuf, random_challenges
from iotguard.keys.puf.fuzzy import FuzzyExtractor, key_failure_probability
from iotguard.keys.puf.metrics import PufQuality, quality
from iotguard.keys.puf.modelling import logistic_regression_attack
from iotguard.keys.puf.sram import NOMINAL, WORST_CASE, OperatingConditions, SramPufPopulation

__all__ = ["CORNERS", "CornerResult", "PufPopulationReport", "population_report"]

#: Operating corners read in the report.
CORNERS: dict[str, OperatingConditions] = {
    "nominal 25C 1.20V new": NOMINAL,
    "hot 85C": OperatingConditions(temperature_c=85.0),
    "cold -40C": OperatingConditions(temperature_c=-40.0),
    "low supply 1.08V": OperatingConditions(voltage_v=1.08),
    "aged 10 years": OperatingConditions(age_years=10.0),
    "worst case 85C 1.08V 10y": WORST_CASE,
}

_ENROLL_READS = 9


@dataclass(frozen=True)
class CornerResult:
    """Bit errors and key reconstructions at one operating corner."""

    name: str
    ber_mean: float
    ber_max: float
    reconstructions: int
    failures: int
    analytic_at_max_ber: float


@dataclass(frozen=True)
class PufPopulationReport:
    """Everything ``iotguard puf report`` prints."""

    devices: int
    cells: int
    seed: int
    response_bits: int
    message_bits: int
    repetition: int
    quality: PufQuality
    corners: tuple[CornerResult, ...]
    reconstructions: int
    failures: int
    failure_rate_upper_95: float
    evidence: FailureRateEvidence
    arbiter_lr_accuracy: float
    xor4_lr_accuracy: float
    crps_used: int

    def as_dict(self) -> dict[str, Any]:
        """Plain mapping for JSON output."""
        return asdict(self)


def population_report(
    devices: int = 1000, *, seed: int = 1, reads_per_corner: int = 3, crps: int = 3000
) -> PufPopulationReport:
    """Build the report (about 10-20 s for 1,000 devices on one core).

    Args:
        devices: Population size.
        seed: Seed of the manufacturing variation and of all noise.
        reads_per_corner: Key reconstructions per device per corner.
        crps: Challenge-response pairs given to the modelling attack.
    """
    rng = np.random.default_rng(seed)
    population = SramPufPopulation(devices, seed=seed)
    fe = FuzzyExtractor()
    n = fe.params.response_bits

    enroll = np.zeros((devices, population.params.cells), dtype=np.uint16)
    for _ in range(_ENROLL_READS):
        enroll += population.read(NOMINAL, rng)
    reference = (enroll > _ENROLL_READS // 2).astype(np.uint8)
    del enroll

    messages = rng.integers(0, 256, (devices, fe.params.blocks * fe.params.bch_data_bytes), dtype=np.uint8)
    offsets = np.empty((devices, n), dtype=np.uint8)
    for d in range(devices):
        offsets[d] = reference[d, :n] ^ fe.encode(messages[d].tobytes())

    nominal_reads = np.stack([population.read(NOMINAL, rng) for _ in range(2)])
    pq = quality(reference, nominal_reads)
    del nominal_reads

    corners = []
    for name, conditions in CORNERS.items():
        bers = np.zeros(devices)
        failures = 0
        for _ in range(reads_per_corner):
            read = population.read(conditions, rng)
            bers += (read != reference).mean(axis=1)
            inner = fe.decode_inner(read[:, :n] ^ offsets)
            for d in range(devices):
                if fe.decode_outer(inner[d]) != messages[d].tobytes():
                    failures += 1
        bers /= reads_per_corner
        corners.append(
            CornerResult(
                name=name,
                ber_mean=float(bers.mean()),
                ber_max=float(bers.max()),
                reconstructions=devices * reads_per_corner,
                failures=failures,
                analytic_at_max_ber=key_failure_probability(float(bers.max()), fe.params),
            )
        )
    total = sum(c.reconstructions for c in corners)
    failed = sum(c.failures for c in corners)
    # One-sided 95 % bound: exact for zero failures (1 - 0.05^(1/n)), a normal approximation otherwise.
    upper = (
        -math.expm1(math.log(0.05) / total)
        if failed == 0
        else min(1.0, (failed + 2 * math.sqrt(failed) + 2) / total)
    )

    evidence = failure_rate_evidence(fe, rng)

    arbiter = ArbiterPuf(64, seed=seed)
    xor4 = XorArbiterPuf(4, 64, seed=seed)
    accuracies = []
    for puf in (arbiter, xor4):
        train = random_challenges(crps, 64, rng)
        model = logistic_regression_attack(train, puf.evaluate(train))
        test = random_challenges(10_000, 64, rng)
        accuracies.append(model.accuracy(test, puf.evaluate(test, noisy=False)))

    return PufPopulationReport(
        devices=devices,
        cells=population.params.cells,
        seed=seed,
        response_bits=n,
        message_bits=fe.params.message_bits,
        repetition=fe.params.repetition,
        quality=pq,
        corners=tuple(corners),
        reconstructions=total,
        failures=failed,
        failure_rate_upper_95=upper,
        evidence=evidence,
        arbiter_lr_accuracy=accuracies[0],
        xor4_lr_accuracy=accuracies[1],
        crps_used=crps,
    )
