"""DP-FedAvg through secure aggregation: each device clips, rounds and noises its update in integers.

The hub must learn only a noised sum, so the noise is added on the devices
(distributed DP, Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation", ICML 2021) and the
noised integer vectors are summed modulo ``2^32`` by secure aggregation
(:mod:`iotguard.analytics.secagg_round`). No floating-point noise is drawn.

**The argument.** A device clips its update to L2 norm ``C``
(:func:`~iotguard.learn.dp.clip`), scales it by ``s`` and rounds each
coordinate to the nearest integer, so one device's integer vector has L2 norm
at most ``Delta = s C + sqrt(d) / 2`` (each coordinate moves by at most 1/2).
It adds a vector of independent *discrete* Gaussians of standard deviation
``sigma = z Delta / sqrt(t)`` drawn by OpenDP's exact sampler
(``make_gaussian`` over ``i64`` vectors with the L2 distance; integer
arithmetic and a cryptographic RNG, no floats), where ``t`` is the secure
round's threshold: the hub can unmask a sum only of at least ``t`` devices'
vectors, so any sum it learns holds at least ``t`` independent noise vectors,
total variance at least ``(z Delta)^2`` per coordinate. The multivariate
discrete Gaussian of scale ``z Delta`` is ``1 / (2 z^2)``-zCDP for integer
inputs at L2 distance ``Delta`` (Canonne, Kamath and Steinke, NeurIPS 2020,
Thm. 14), the same as the continuous Gaussian, so a round is accounted as the
Gaussian mechanism with noise multiplier ``z`` and sampling rate 1
(:class:`~iotguard.learn.dp.RdpAccountant`). A sum of discrete Gaussians is
not exactly one; Kairouz et al. (Thm. 1) bound the gap by
``tau = 10 sum_{k=1}^{t-1} exp(-2 pi^2 sigma^2 k / (k+1))``, which for the
per-device ``sigma`` here (thousands of units) is below ``exp(-10^6)``: nothing.

Modular wrap: ``s`` is chosen so the sum of ``n`` clipped vectors plus eight
standard deviations of the noise stays inside ``(-2^31, 2^31)``; a wrap
beyond that (probability below ``1e-15`` a coordinate) would cost accuracy,
never privacy (the sum modulo ``2^32`` is a function of the noised sum).

**Random-k under secure aggregation.** Top-k cannot pass through secure
aggregation (each device would keep different coordinates, and the masked
sums must line up). Instead a round may keep ``k < d`` coordinates chosen by
the round itself (:func:`round_coordinates`: SHAKE-256 of the public round
id ranks the coordinates, the ``k`` lowest are kept), the same for every
device, so the masked vector has ``k`` words instead of ``d``. Each device
keeps the coordinates it did not send as an error-feedback residual and adds
them to its next update (random-k with memory, Stich, Cordonnier and Jaggi,
NeurIPS 2018). The DP argument above is unchanged with ``d`` replaced by
``k``: what a device sends in a round is the ``k``-vector clipped to ``C``,
whatever its residual held. No I/O here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotguard.errors import ConfigError, MalformedError
from iotguard.learn.dp import clip

__all__ = ["SecureRoundPlan", "discrete_gaussian", "plan_round", "round_coordinates"]

Array = npt.NDArray[np.float64]
_RANGE = (1 << 31) - 1
#: Standard deviations of the summed noise kept inside the 32-bit range.
_TAIL = 8.0


@dataclass(frozen=True)
class SecureRoundPlan:
    """How the devices of one secure round encode their updates (sent to each device with its task).

    Attributes:
        dims: Length of the vector each device sends (``k``).
        clip_norm: L2 bound ``C`` of each update.
        scale: Fixed-point units per 1.0.
        noise_std: Each device's discrete-Gaussian standard deviation in fixed-point units (0: no noise).
        model_dims: The model's update length ``d`` (0: ``dims``, every coordinate sent); above ``dims``, the
            round sends the ``dims`` coordinates of :func:`round_coordinates`.
    """

    dims: int
    clip_norm: float
    scale: float
    noise_std: float
    model_dims: int = 0

    def __post_init__(self) -> None:
        if self.model_dims == 0:
            object.__setattr__(self, "model_dims", self.dims)
        if not (1 <= self.dims <= self.model_dims <= 1 << 20 and math.isfinite(self.clip_norm) and self.clip_norm > 0
                and math.isfinite(self.scale) and self.scale >= 1 and math.isfinite(self.noise_std)
                and 0 <= self.noise_std <= _RANGE):
            raise MalformedError("secure round plan out of range", code="malformed")

    @property
    def sensitivity(self) -> float:
        """``Delta``: the L2 bound of one device's rounded integer vector."""
        return self.scale * self.clip_norm + math.sqrt(self.dims) / 2

    def encode(self, update: Array, noise: Callable[[list[int], float], list[int]]) -> npt.NDArray[np.uint32]:
        """The device's vector for secure aggregation: clip, scale, round, add noise, reduce modulo ``2^32``.

        Args:
            update: The dense model update (length :attr:`dims`).
            noise: The integer noise sampler (:func:`discrete_gaussian`).

        Raises:
            ConfigError: wrong length or not finite.
        """
        if update.shape != (self.dims,) or not np.all(np.isfinite(update)):
            raise ConfigError("update does not match the round")
        ints = np.rint(clip(update, self.clip_norm) * self.scale).astype(np.int64)
        if self.noise_std > 0:
            ints = np.asarray(noise([int(v) for v in ints], self.noise_std), dtype=np.int64)
        return (ints % (1 << 32)).astype(np.uint32)

    def decode_sum(self, total: Sequence[int]) -> Array:
        """The float sum from the round's sum modulo ``2^32`` (two's complement).

        Raises:
            MalformedError: wrong length or out-of-range values.
        """
        raw = np.asarray(total, dtype=np.int64)
        if raw.shape != (self.dims,) or np.any(raw < 0) or np.any(raw >= 1 << 32):
            raise MalformedError("secure sum does not match the round", code="malformed")
        raw[raw >= 1 << 31] -= 1 << 32
        out: Array = raw.astype(np.float64) / self.scale
        return out

    def sparsify(self, update: Array, round_id: str) -> tuple[Array, Array]:
        """Split a dense update into what this round sends (the round's ``k`` coordinates) and the residual a
        device keeps for its next round (every other coordinate; zeros where it sent).

        Raises:
            ConfigError: wrong length.
        """
        if update.shape != (self.model_dims,):
            raise ConfigError("update does not match the model")
        if self.dims == self.model_dims:
            return update, np.zeros(self.model_dims)
        idx = round_coordinates(round_id, self.model_dims, self.dims)
        residual = update.copy()
        residual[idx] = 0.0
        return update[idx], residual

    def scatter(self, values: Array, round_id: str) -> Array:
        """A dense update of the model's length with ``values`` (this round's ``k`` coordinates) in place."""
        if self.dims == self.model_dims:
            return values
        out = np.zeros(self.model_dims)
        out[round_coordinates(round_id, self.model_dims, self.dims)] = values
        return out

    def to_dict(self) -> dict[str, float | int]:
        return {"dims": self.dims, "clip_norm": self.clip_norm, "scale": self.scale, "noise_std": self.noise_std,
                "model_dims": self.model_dims}


def round_coordinates(round_id: str, model_dims: int, kept: int) -> npt.NDArray[np.int64]:
    """The ``kept`` coordinates (ascending) a random-k round sends: the lowest of ``model_dims`` 64-bit ranks from
    SHAKE-256 over the public round id (ties broken by index), so devices and hub agree on any platform.

    Raises:
        ConfigError: ``kept`` not in ``1..model_dims`` or ``model_dims`` above 2^20.
    """
    if not 1 <= kept <= model_dims <= 1 << 20:
        raise ConfigError("kept coordinates out of range")
    ranks = np.frombuffer(hashlib.shake_256(b"iotguard-randk-v1|" + round_id.encode()).digest(8 * model_dims),
                          dtype="<u8")
    return np.sort(np.argsort(ranks, kind="stable")[:kept]).astype(np.int64)


def plan_round(model_dims: int, clip_norm: float, noise_multiplier: float, members: int, threshold: int,
               kept_fraction: float = 1.0) -> SecureRoundPlan:
    """The encoding of a round among ``members`` devices whose sum is revealed only with ``threshold`` of them.

    ``noise_multiplier`` 0 means no noise (secure aggregation without DP); ``kept_fraction`` below 1 sends only
    that fraction of the coordinates (random-k, the same for every device of the round).

    Raises:
        ConfigError: the parameters do not fit 32-bit secure aggregation.
    """
    if not (1 <= threshold <= members and clip_norm > 0 and noise_multiplier >= 0 and model_dims >= 1
            and 0 < kept_fraction <= 1):
        raise ConfigError("need 1 <= threshold <= members, clip norm > 0, noise multiplier >= 0, "
                          "0 < kept fraction <= 1")
    dims = max(1, min(model_dims, round(kept_fraction * model_dims)))
    k = _TAIL * noise_multiplier * math.sqrt(members / threshold)
    scale = math.floor((_RANGE - k * math.sqrt(dims) / 2) / (clip_norm * (members + k)))
    if scale < 1:
        raise ConfigError("clip norm, noise and devices do not fit 32-bit secure aggregation")
    plan = SecureRoundPlan(dims, clip_norm, float(scale), 0.0, model_dims)
    std = noise_multiplier * plan.sensitivity / math.sqrt(threshold)
    return SecureRoundPlan(dims, clip_norm, float(scale), std, model_dims)


def discrete_gaussian(values: list[int], std: float) -> list[int]:
    """``values`` plus independent discrete Gaussians of scale ``std`` (OpenDP's exact sampler, OS randomness)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64")
    measurement = dp.m.make_gaussian(*space, scale=float(std))
    return [int(v) for v in measurement(values)]
