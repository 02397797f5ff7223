"""Model updates through secure aggregation (:mod:`iotguard.analytics.secagg`), in simulation.

Secure aggregation sums integers modulo ``2^32``. :func:`secure_sum` maps
each device's float vector to fixed point (each coordinate clamped to
``[-bound, bound]`` and scaled so that the sum of ``n`` of them cannot wrap
past ``2^31``), runs the protocol's rounds between
:class:`~iotguard.analytics.secagg.Device` objects and one
:class:`~iotguard.analytics.secagg.Aggregator` (key advertisement, Shamir
shares, masked inputs, unmasking shares, dropouts after sharing recovered
from key shares), and decodes the two's-complement sum.

The returned :class:`SecureRoundView` is everything the hub received: it
is what a test inspects to show that no individual update was in clear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iotguard.analytics.secagg import SHARE_BYTES, Aggregator, Device, Share
from iotguard.errors import ConfigError

__all__ = ["SHARE_BYTES", "SecureRoundView", "secure_sum"]

Array = npt.NDArray[np.float64]
#: Bytes a device advertises: its X25519 mask and share-box public keys.
_KEY_BYTES = 2 * 32
#: The sealing tag of a share box (one per peer; ChaCha20-Poly1305).
_TAG_BYTES = 16


@dataclass(frozen=True)
class SecureRoundView:
    """What the hub saw of one secure-aggregation round.

    Attributes:
        public_keys: Each device's X25519 mask public key.
        masked: Each surviving device's masked vector.
        unmask_shares: The shares survivors revealed for unmasking.
        bytes_per_device: Bytes each device sent (keys, shares, masked vector, unmask shares).
        scale: Fixed-point scale used.
    """

    public_keys: Mapping[int, bytes]
    masked: Mapping[int, npt.NDArray[np.uint32]]
    unmask_shares: Sequence[Share]
    bytes_per_device: Mapping[int, int]
    scale: float


def _fixed_point_scale(n: int, bound: float) -> float:
    scale = float(np.floor((2**31 - 1) / (n * bound)))
    if scale < 1.0:
        raise ConfigError("bound too large for 32-bit secure aggregation of this many devices")
    return scale


def secure_sum(vectors: Mapping[int, Array], bound: float, *, drop_after_sharing: Sequence[int] = (),
               threshold: int | None = None) -> tuple[Array, SecureRoundView]:
    """Sum of the vectors of devices that finish, computed through secure aggregation.

    Args:
        vectors: Device index (``0..n-1``) to its float vector (all one length).
        bound: Each coordinate is clamped to ``[-bound, bound]`` on the device.
        drop_after_sharing: Devices that leave after sending shares and before
            their masked input (the protocol recovers without them).
        threshold: Shamir threshold (default: a strict majority of ``n``).

    Raises:
        ConfigError: bad indices or lengths, or the bound does not fit 32 bits.
        AggregationError: too few survivors (the round fails; nothing is revealed).
    """
    n = len(vectors)
    if n < 2 or sorted(vectors) != list(range(n)) or not bound > 0:
        raise ConfigError("secure sum needs devices 0..n-1 (n >= 2) and a positive bound")
    dims = {v.shape for v in vectors.values()}
    if len(dims) != 1:
        raise ConfigError("vectors differ in length")
    (d,) = dims.pop()
    t = threshold if threshold is not None else n // 2 + 1
    scale = _fixed_point_scale(n, bound)
    devices = {}
    for i, v in vectors.items():
        fixed = np.round(np.clip(v, -bound, bound) * scale).astype(np.int64)
        devices[i] = Device(i, (fixed % (1 << 32)).astype(np.uint32))
    agg = Aggregator(n, t, d)
    sent = dict.fromkeys(devices, _KEY_BYTES)
    for i, dev in devices.items():
        agg.add_public_key(i, dev.public_key)
    for dev in devices.values():
        for share in dev.shares_for_peers(n, t):
            devices[share.holder].receive_share(share)
            sent[dev.index] += SHARE_BYTES
        sent[dev.index] += _TAG_BYTES * (n - 1)  # one sealed box per peer
    survivors = [i for i in devices if i not in set(drop_after_sharing)]
    for i in survivors:
        agg.add_masked(i, devices[i].masked_input(agg.public_keys))
        sent[i] += 4 * d
    dropped = sorted(set(devices) - set(survivors))
    shares: list[Share] = []
    for i in survivors:
        mine = devices[i].unmask_shares(survivors, dropped)
        shares.extend(mine)
        sent[i] += SHARE_BYTES * len(mine)
    total = agg.unmask(shares)
    signed = total.astype(np.int64)
    signed[signed >= 1 << 31] -= 1 << 32
    view = SecureRoundView(dict(agg.public_keys), dict(agg.masked), tuple(shares), sent, scale)
    return signed.astype(np.float64) / scale, view
