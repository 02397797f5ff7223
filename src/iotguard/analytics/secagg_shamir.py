"""Shamir sharing and batched reconstruction for secure aggregation (ADRs 0416, 0417).

Shares are points ``(x, f(x))`` over the prime field ``2^128 + 51``. The
x-coordinates are small: a holder's position in its owner's holder list
plus one (ADR 0417), so every x lies in ``1..65536`` and, with nobody
dropping, every owner's holder set is the same ``1..k + 1``. Reconstruction
groups the secrets by holder set and computes, once per set, the Lagrange
coefficients at 0 and the barycentric weights of the Reed-Solomon parity
checks. For a set ``S`` inside ``1..K`` the weights come from factorials
(``1 / prod_{j != i, j <= K} (i - j) = (-1)^(K - i) / ((i - 1)! (K - i)!)``)
times the product over the missing x-coordinates only, and the modular
inverses come from one table per ``K``: no per-set inversion. Re-exported by
:mod:`iotguard.analytics.secagg`.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from iotguard.errors import ConfigError, MalformedError

__all__ = ["MAX_X", "PRIME", "ROUND_STATE_REASONS", "SECRET_BYTES", "AggregationError", "combine",
           "reconstruct_all", "split"]

#: Bytes of every secret of a round (mask-key secret, self-mask seed, pair seed): 128 bits (ADR 0416).
SECRET_BYTES = 16
#: Field of the Shamir shares: the smallest prime above every 16-byte secret (2^128 + 51).
PRIME = (1 << 128) + 51
#: Largest x-coordinate of a share: a position in a holder list of at most 65,536 devices, plus one.
MAX_X = 1 << 16

#: Refusals that say where the round is (it moved on, is unknown, already has this step, does not hold the
#: device), not that the bytes are bad: their error ``code`` is the reason itself, so a device is answered
#: with it (409/404/403, ``hub.api.HTTP_STATUS``) instead of a generic ``malformed``.
ROUND_STATE_REASONS = frozenset({"wrong_phase", "round_unknown", "message_duplicate", "not_in_round"})


class AggregationError(MalformedError):
    """A share or message was rejected; ``reason`` is a stable code (also the ``code`` of a round-state one)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason,
                         code=reason if reason in ROUND_STATE_REASONS else None)
        self.reason = reason


def split(secret: bytes, n: int, t: int, xs: Sequence[int] | None = None) -> list[int]:
    """Shamir shares ``f(1), ..., f(n)`` (or ``f(x)`` for each of ``xs``) of ``secret`` with threshold ``t``.

    Raises:
        ConfigError: a bad threshold, or a secret that is not below the field's prime.
    """
    if not 1 <= t <= n:
        raise ConfigError("threshold must be 1..n")
    value = int.from_bytes(secret, "big")
    if value >= PRIME:
        raise ConfigError("the secret does not fit the share field")
    coeffs = [value] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    out = []
    for x in xs if xs is not None else range(1, n + 1):
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        out.append(acc)
    return out


@lru_cache(maxsize=4)
def _tables(k: int) -> tuple[list[int], list[int]]:
    """Inverse factorials ``1 / i!`` for ``i = 0..k`` and inverses ``1 / i`` (index ``i``; index 0 unused)."""
    fact = [1] * (k + 1)
    for i in range(1, k + 1):
        fact[i] = fact[i - 1] * i % PRIME
    inv_fact = [1] * (k + 1)
    inv_fact[k] = pow(fact[k], -1, PRIME)
    for i in range(k, 0, -1):
        inv_fact[i - 1] = inv_fact[i] * i % PRIME
    inv = [0] + [fact[i - 1] * inv_fact[i] % PRIME for i in range(1, k + 1)]
    return inv_fact, inv


def _check_xs(xs: Sequence[int]) -> None:
    """Raises AggregationError (``share_malformed``) unless the x-coordinates are ascending, distinct, in
    ``1..MAX_X``: the Lagrange argument needs distinct non-zero points, and a point at 0 would be the secret."""
    if not all(isinstance(x, int) and 1 <= x <= MAX_X for x in xs) or any(a >= b for a, b in itertools.pairwise(xs)):
        raise AggregationError("share_malformed", f"x-coordinates must be distinct, ascending, 1..{MAX_X}")


class _HolderSet:
    """What reconstruction needs for one set of x-coordinates: coefficients at 0 and parity checks.

    Raises:
        AggregationError: ``share_malformed`` for x-coordinates that are not distinct, ascending, 1..MAX_X.
    """

    def __init__(self, xs: Sequence[int], t: int) -> None:
        self.xs = list(xs)
        _check_xs(self.xs)
        # v: barycentric weights of all m points. Points beyond t lie on a polynomial of degree < t iff
        # sum_i v_i x_i^k y_i = 0 for k < m - t (the dual of a Reed-Solomon code); once they do,
        # interpolating through all m points gives that polynomial, so the secret uses every point:
        # L_i(0) = prod_j (0 - x_j) * v_i / (0 - x_i).
        self.checks = len(self.xs) - t
        k = self.xs[-1]
        inv_fact, inv = _tables(k)
        missing = np.setdiff1d(np.arange(1, k + 1, dtype=np.int64), np.asarray(self.xs, dtype=np.int64))
        nums = _row_products(np.asarray(self.xs, dtype=np.int64), missing, k)
        self.v = [(-1 if (k - x) % 2 else 1) * inv_fact[x - 1] * inv_fact[k - x] % PRIME * num % PRIME
                  for x, num in zip(self.xs, nums, strict=True)]
        prod = (-1) ** len(self.xs) * math.prod(self.xs) % PRIME
        self.at_zero = [prod * vi % PRIME * (PRIME - inv[x]) % PRIME for vi, x in zip(self.v, self.xs, strict=True)]

    def secret(self, ys: Sequence[int]) -> int:
        """``f(0)`` from the values at every x-coordinate (check :meth:`consistent` first)."""
        return int(sum(c * y for c, y in zip(self.at_zero, ys, strict=True)) % PRIME)

    def consistent(self, ys: Sequence[int], r: int | None = None) -> bool:
        """Whether the points lie on one polynomial of degree < t: all ``c = m - t`` parity checks
        ``S_k = sum_i v_i x_i^k y_i`` vanish, tested at once as ``sum_k r^k S_k = sum_i v_i y_i R(x_i)`` with
        ``R(x) = sum_{k<c} (r x)^k`` for a random ``r`` drawn after the shares are in: a non-zero check is
        missed with probability at most ``(c - 1) / p`` (Schwartz-Zippel; below 2^-112 for any ``c`` a round
        allows). ``r``: one random point shared by the sets of one reconstruction."""
        c = self.checks
        if not c:
            return True
        rx = _geometric(secrets.randbelow(PRIME) if r is None else r, c, tuple(self.xs))
        total = sum(vi * yi % PRIME * ri for vi, yi, ri in zip(self.v, ys, rx, strict=True))
        return total % PRIME == 0


def _row_products(xs: np.ndarray, missing: np.ndarray, k: int) -> list[int]:
    """``prod_{j in missing} (x_i - j)`` for each ``x_i``, exact: the differences (below ``k`` in magnitude,
    never 0) are multiplied in NumPy ``int64`` groups whose products stay below 2^62, then over the integers."""
    if not len(missing):
        return [1] * len(xs)
    d = xs[:, None] - missing[None, :]
    group = max(1, 62 // max(1, k.bit_length()))
    pad = (-d.shape[1]) % group
    if pad:
        d = np.concatenate([d, np.ones((len(xs), pad), dtype=np.int64)], axis=1)
    return [math.prod(row) % PRIME for row in d.reshape(len(xs), -1, group).prod(axis=2).tolist()]


@lru_cache(maxsize=16)
def _geometric(r: int, c: int, xs: tuple[int, ...]) -> list[int]:
    """``R(x) = sum_{k<c} (r x)^k = (1 - (r x)^c) / (1 - r x)`` for each of ``xs`` (``c`` where ``r x = 1``);
    cached, so holder sets that coincide (nobody dropping) share one evaluation."""
    q = [r * x % PRIME for x in xs]
    dens = [(1 - qi) % PRIME or 1 for qi in q]
    inv = _batch_inverse(dens)
    return [c if qi == 1 else (1 - pow(qi, c, PRIME)) * ii % PRIME for qi, ii in zip(q, inv, strict=True)]


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Modular inverses of many non-zero field elements with one exponentiation (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % PRIME
        inv = inv * values[i] % PRIME
    return out


def reconstruct_all(points: Mapping[Any, Sequence[tuple[int, int]]], t: int,
                    size: int = SECRET_BYTES) -> dict[Any, bytes]:
    """Reconstruct many secrets, each from its ``(x, y)`` points (x ascending in ``1..MAX_X``); every point
    beyond ``t`` must agree.

    Secrets shared among the same holders reuse one set of coefficients.

    Raises:
        AggregationError: ``too_few_shares``, ``share_inconsistent`` (naming the secret), ``share_out_of_range``,
            ``share_malformed`` (x-coordinates not distinct, ascending, in range).
    """
    groups: dict[tuple[int, ...], list[Any]] = {}
    for key, pts in points.items():
        if len(pts) < t:
            raise AggregationError("too_few_shares", f"{key}: {len(pts)} of {t}")
        groups.setdefault(tuple(x for x, _ in pts), []).append(key)
    r = secrets.randbelow(PRIME)  # drawn after every share is in, shared by every holder set
    out: dict[Any, bytes] = {}
    for xs, keys in groups.items():
        hs = _HolderSet(xs, t)
        if hs.checks:
            # one secret is checked as it is; several are mixed by random coefficients and checked at once
            coeffs = [secrets.randbelow(PRIME) for _ in keys] if len(keys) > 1 else [1]
            mixed = ([y for _, y in points[keys[0]]] if len(keys) == 1 else
                     [sum(c * points[k][i][1] for c, k in zip(coeffs, keys, strict=True)) % PRIME
                      for i in range(len(xs))])
            if not hs.consistent(mixed, r):
                for k in keys:
                    if not hs.consistent([y for _, y in points[k]]):
                        raise AggregationError("share_inconsistent", f"shares of {k} are not on one polynomial")
        for k in keys:
            secret = hs.secret([y for _, y in points[k]])  # all points: consistent (checked above)
            if secret >= 1 << (8 * size):
                raise AggregationError("share_out_of_range", f"reconstructed secret of {k} is too large")
            out[k] = secret.to_bytes(size, "big")
    return out


def combine(points: Sequence[tuple[int, int]], t: int, size: int = SECRET_BYTES) -> bytes:
    """Reconstruct a secret from ``(x, y)`` points; every point beyond ``t`` must agree.

    Raises:
        AggregationError: ``too_few_shares``, ``share_inconsistent``, ``share_out_of_range``, ``share_malformed``.
    """
    return reconstruct_all({"secret": sorted(points)}, t, size)["secret"]
