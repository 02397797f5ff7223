"""SecAgg+'s graph degree from the dropout rate (Bell et al., CCS 2020; ADR 0415).

A device's ``k`` neighbours hold its shares; the round unmasks only if each
dropped device keeps at least ``t = k // 2 + 1`` surviving neighbours (the
threshold :mod:`iotguard.analytics.secagg` enforces). These functions bound
the chance that some device does not, and pick the smallest degree that
keeps it below ``2^-eta``. Re-exported by :mod:`iotguard.analytics.secagg`.
"""

from __future__ import annotations

import math

from iotguard.errors import ConfigError

__all__ = ["degree_failure_log2", "secagg_plus_degree"]


def degree_failure_log2(n: int, dropped: int, k: int) -> float:
    """log2 of a union bound on the chance that some device has fewer than ``t = k // 2 + 1`` surviving
    neighbours (the round then cannot unmask: ``too_few_shares``) when ``dropped`` of ``n`` devices, chosen
    at random, drop after sharing; exact hypergeometric tail for a device's ``k`` neighbours."""
    if not 0 <= dropped < n or not 2 <= k < n:
        raise ConfigError("need 0 <= dropped < n and 2 <= k < n")
    t = k // 2 + 1
    alive = n - 1 - dropped  # the others a dropped device's neighbours are drawn from, minus the dropped
    tail = sum(math.comb(alive, x) * math.comb(n - 1 - alive, k - x) for x in range(t))
    p = n * tail / math.comb(n - 1, k)
    return -math.inf if p == 0 else math.log2(p)


def secagg_plus_degree(n: int, dropout: float, correctness_bits: int = 30) -> int:
    """The smallest even SecAgg+ degree for which a round of ``n`` devices with a ``dropout`` fraction dropped
    unmasks except with probability ``2^-correctness_bits`` (Bell et al. 2020's ``eta``; union bound over the
    devices), at this module's threshold ``t = k // 2 + 1`` (above half the holders, which keeps a hub that
    asks inconsistent questions from getting both secrets of a device). ``n - 1`` (everyone) when no smaller
    degree suffices."""
    dropped = math.floor(n * dropout)
    for k in range(2, n - 1, 2):
        if degree_failure_log2(n, dropped, k) <= -correctness_bits:
            return k
    return n - 1
