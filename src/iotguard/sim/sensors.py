"""Plausible sensor models for the simulated fleet.

Each model is a small stateful process seeded per device, so a run is
reproducible: temperature and humidity follow a daily cycle with noise,
motion is a Poisson process with bursts, power switches appliances on and
off, heart rate drifts around a resting rate with activity episodes, and
location is a correlated random walk.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["MODELS", "SensorModel", "make_sensor"]

Fields = dict[str, int | float | str | bool | tuple[float, float]]


class SensorModel:
    """Base: ``sample(t)`` returns the fields of one reading at time ``t`` (seconds)."""

    model = "generic"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def sample(self, t: float) -> Fields:
        raise TypeError(f"{type(self).__name__} must define sample()")


class Thermo(SensorModel):
    model = "thermo-1"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.base = self.rng.uniform(18.0, 24.0)
        self.humid = self.rng.uniform(35.0, 60.0)

    def sample(self, t: float) -> Fields:
        day = math.sin(2 * math.pi * (t % 86400) / 86400)
        temp = self.base + 3.0 * day + self.rng.gauss(0, 0.2)
        hum = min(100.0, max(0.0, self.humid - 8.0 * day + self.rng.gauss(0, 1.0)))
        return {"temperature": round(temp, 2), "humidity": round(hum, 1)}


class Motion(SensorModel):
    model = "motion-1"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.rate = self.rng.uniform(0.02, 0.3)
        self.burst = 0

    def sample(self, t: float) -> Fields:
        if self.burst > 0:
            self.burst -= 1
            return {"motion": True}
        if self.rng.random() < self.rate:
            self.burst = self.rng.randint(0, 5)
            return {"motion": True}
        return {"motion": False}


class Meter(SensorModel):
    model = "meter-1"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.base = self.rng.uniform(80.0, 250.0)
        self.appliances = [(self.rng.uniform(500, 2500), self.rng.uniform(0.01, 0.1)) for _ in range(3)]
        self.on = [False] * 3

    def sample(self, t: float) -> Fields:
        for i, (_w, p) in enumerate(self.appliances):
            if self.rng.random() < p:
                self.on[i] = not self.on[i]
        watts = self.base + sum(w for (w, _p), on in zip(self.appliances, self.on, strict=True) if on)
        return {"power": round(watts + self.rng.gauss(0, 5.0), 1)}


class Wearable(SensorModel):
    model = "wear-1"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.rest = self.rng.uniform(55.0, 80.0)
        self.activity = 0.0
        self.lat = 52.37 + self.rng.uniform(-0.05, 0.05)
        self.lon = 4.89 + self.rng.uniform(-0.05, 0.05)
        self.wearer = f"person-{self.rng.randrange(10**6):06d}"

    def sample(self, t: float) -> Fields:
        if self.rng.random() < 0.02:
            self.activity = self.rng.uniform(20.0, 80.0)
        self.activity *= 0.95
        hr = self.rest + self.activity + self.rng.gauss(0, 2.0)
        self.lat += self.rng.gauss(0, 0.0002)
        self.lon += self.rng.gauss(0, 0.0002)
        return {"heart_rate": int(max(35, min(210, hr))), "location": (round(self.lat, 6), round(self.lon, 6)),
                "wearer": self.wearer}


class Tracker(SensorModel):
    model = "tracker-1"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.lat = 48.85 + self.rng.uniform(-0.2, 0.2)
        self.lon = 2.35 + self.rng.uniform(-0.2, 0.2)
        self.heading = self.rng.uniform(0, 2 * math.pi)

    def sample(self, t: float) -> Fields:
        self.heading += self.rng.gauss(0, 0.3)
        step = self.rng.uniform(0.0, 0.0005)
        self.lat += step * math.cos(self.heading)
        self.lon += step * math.sin(self.heading)
        return {"location": (round(self.lat, 6), round(self.lon, 6))}


MODELS: dict[str, Callable[[int], SensorModel]] = {
    cls.model: cls for cls in (Thermo, Motion, Meter, Wearable, Tracker)
}


def make_sensor(model: str, seed: int) -> SensorModel:
    """Sensor model for a device model name.

    Raises:
        KeyError: unknown model.
    """
    return MODELS[model](seed)
