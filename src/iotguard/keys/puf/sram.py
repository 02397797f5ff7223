"""Simulated SRAM PUF: the power-up state of an SRAM array.

Each cell is a cross-coupled inverter pair; manufacturing variation leaves it
with a threshold mismatch ``m`` that decides which way it settles at power-up.
The model, in units of the process mismatch spread, per cell ``i`` of device
``d``::

    m[d, i]   = process[d, i] + layout[i] + bias           (manufacture)
    drift     = alpha[d, i] * (T - T0) + beta[d, i] * (V - V0)
    value     = (m + drift) * (1 - shrink * years) + noise  (every read)
    noise     ~ N(0, sigma_n(T, V, years))
    bit       = value > 0

* ``process`` is independent per device and cell (what makes devices unique),
* ``layout`` is shared by every device at the same address (systematic
  variation: it is what bit-aliasing measures),
* ``bias`` skews all cells (uniformity),
* ``alpha``/``beta`` are per-cell temperature and voltage sensitivities, so
  reads away from the enrollment corner disagree with it systematically,
* the noise grows with temperature and voltage deviation and with age, and
  ageing (NBTI) shrinks the mismatch, so old devices flip more.

Everything is vectorised over a population so a thousand devices of 4 kbit
each read in milliseconds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "NOMINAL",
    "WORST_CASE",
    "OperatingConditions",
    "SramPuf",
    "SramPufParameters",
    "SramPufPopulation",
]

Bits = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class OperatingConditions:
    """Environment of one PUF read.

    Attributes:
        temperature_c: Die temperature (degrees Celsius).
        voltage_v: Supply voltage (volts).
        age_years: Time in the field since enrollment (years).
    """

    temperature_c: float = 25.0
    voltage_v: float = 1.2
    age_years: float = 0.0


#: Enrollment corner.
NOMINAL = OperatingConditions()
#: The harshest corner iotguard specifies for deployed devices.
WORST_CASE = OperatingConditions(temperature_c=85.0, voltage_v=1.08, age_years=10.0)


@dataclass(frozen=True)
class SramPufParameters:
    """Manufacturing and noise model of an SRAM PUF (units: process mismatch sigma).

    The defaults give about 4 % bit errors against the enrollment reference at
    25 C / 1.2 V and about 12 % at the worst-case corner (85 C, -10 % supply,
    ten years of ageing), in line with published SRAM PUF measurements.
    """

    cells: int = 4096
    layout_sigma: float = 0.08
    bias: float = 0.04
    noise_sigma: float = 0.13
    noise_per_kelvin: float = 0.006
    noise_per_volt: float = 1.5
    noise_per_year: float = 0.006
    temperature_sigma_per_kelvin: float = 0.004
    voltage_sigma_per_volt: float = 0.6
    shrink_per_year: float = 0.012
    nominal_temperature_c: float = 25.0
    nominal_voltage_v: float = 1.2


class SramPufPopulation:
    """A manufactured batch of SRAM PUF devices.

    Args:
        devices: Number of devices.
        params: The physical model.
        seed: Seed of the manufacturing variation (the same seed builds the
            same silicon).
    """

    def __init__(self, devices: int, params: SramPufParameters | None = None, *, seed: int = 0) -> None:
        if devices < 1:
            raise ValueError("a population needs at least one device")
        self.params = params or SramPufParameters()
        p = self.params
        rng = np.random.default_rng(seed)
        layout = rng.normal(0.0, p.layout_sigma, p.cells).astype(np.float32)
        process = rng.standard_normal((devices, p.cells), dtype=np.float32)
        self._mismatch = process + layout + np.float32(p.bias)
        self._alpha = rng.normal(0.0, p.temperature_sigma_per_kelvin, (devices, p.cells)).astype(np.float32)
        self._beta = rng.normal(0.0, p.voltage_sigma_per_volt, (devices, p.cells)).astype(np.float32)

    @property
    def devices(self) -> int:
        """Number of devices in the population."""
        return int(self._mismatch.shape[0])

    def read(
        self,
        conditions: OperatingConditions = NOMINAL,
        rng: np.random.Generator | None = None,
        *,
        devices: slice | None = None,
    ) -> Bits:
        """One power-up read of every device (shape ``(devices, cells)``, values 0/1)."""
        sel = devices if devices is not None else slice(None)
        return _read(self.params, self._mismatch[sel], self._alpha[sel], self._beta[sel], conditions, rng)

    def device(self, index: int, rng: np.random.Generator | None = None) -> SramPuf:
        """The PUF of one device of the population."""
        return SramPuf(
            self.params,
            self._mismatch[index].copy(),
            self._alpha[index].copy(),
            self._beta[index].copy(),
            rng=rng,
        )


class SramPuf:
    """The SRAM PUF of one device.

    Build one with :meth:`manufacture` (or :meth:`SramPufPopulation.device`).
    The object is the silicon: it has no API that returns the noise-free
    cell mismatch, only noisy power-up reads.
    """

    def __init__(
        self,
        params: SramPufParameters,
        mismatch: npt.NDArray[np.float32],
        alpha: npt.NDArray[np.float32],
        beta: npt.NDArray[np.float32],
        *,
        rng: np.random.Generator | None = None,
    ) -> None:
        self._params = params
        self._mismatch = mismatch
        self._alpha = alpha
        self._beta = beta
        self._rng = rng or np.random.default_rng()
        self.conditions = NOMINAL

    @classmethod
    def manufacture(cls, params: SramPufParameters | None = None, *, seed: int | None = None) -> SramPuf:
        """Make one device with fresh manufacturing variation."""
        population = SramPufPopulation(1, params, seed=seed if seed is not None else _fresh_seed())
        return population.device(0)

    def __repr__(self) -> str:
        return f"SramPuf(cells={self.cells})"

    @property
    def cells(self) -> int:
        """Number of cells (response bits)."""
        return int(self._mismatch.shape[0])

    def read(self, conditions: OperatingConditions | None = None) -> Bits:
        """One power-up read (``cells`` values 0/1) at ``conditions`` (or :attr:`conditions`)."""
        cond = conditions or self.conditions
        bits: Bits = _read(
            self._params, self._mismatch[None], self._alpha[None], self._beta[None], cond, self._rng
        )[0]
        return bits


def _fresh_seed() -> int:
    return secrets.randbits(63)


def _read(
    p: SramPufParameters,
    mismatch: npt.NDArray[np.float32],
    alpha: npt.NDArray[np.float32],
    beta: npt.NDArray[np.float32],
    c: OperatingConditions,
    rng: np.random.Generator | None,
) -> Bits:
    rng = rng or np.random.default_rng()
    d_t = c.temperature_c - p.nominal_temperature_c
    d_v = c.voltage_v - p.nominal_voltage_v
    sigma = p.noise_sigma * (1 + p.noise_per_kelvin * abs(d_t) + p.noise_per_volt * abs(d_v)) + (
        p.noise_per_year * c.age_years
    )
    shrink = max(0.0, 1.0 - p.shrink_per_year * c.age_years)
    value = mismatch + alpha * np.float32(d_t) + beta * np.float32(d_v)
    if shrink != 1.0:
        value = value * np.float32(shrink)
    noise = rng.standard_normal(mismatch.shape, dtype=np.float32)
    noise *= np.float32(sigma)
    bits: Bits = (value + noise > 0).astype(np.uint8)
    return bits
