"""Central differential privacy on the hub, built on OpenDP measurements.

A :class:`CentralQuery` names a statistic (``count``, ``sum``, ``mean``,
``histogram``, ``quantile``), a privacy loss ``epsilon`` and the per-subject contribution
bound ``max_per_subject``. :func:`release`:

1. bounds contributions: each data subject keeps at most ``max_per_subject``
   rows (the first ones given, i.e. arrival order), so datasets that differ
   in one subject are at symmetric distance ``<= max_per_subject``;
2. builds the OpenDP measurement (clamp to ``[lo, hi]``, sum / count /
   count by category, Laplace noise; OpenDP's samplers are exact, so there is
   no floating-point leak) with the noise scale found by
   ``binary_search_param`` so that its privacy map at ``d_in =
   max_per_subject`` is at most ``epsilon``;
3. charges ``epsilon`` to every subject present, all or nothing, through
   :meth:`~iotguard.privacy.PrivacyLossLedger.charge_all` (a refused query
   spends nothing and draws no noise);
4. runs the measurement.

``quantile`` is OpenDP's quantile scoring of ``candidates`` evenly spaced
candidates over ``[lo, hi]`` (Smith 2011) followed by its exact noisy-max
selection: the answer is a candidate, ``ci95`` is ``None``.
:func:`release_grouped` answers one statistic per group of a declared,
public list of groups (groups are never discovered from the data): a
``count`` is one count-by-category measurement over the groups at the full
``epsilon`` (a subject's bounded rows change the group counts by at most
``max_per_subject`` in total); any other statistic runs once per group at
``epsilon / len(groups)`` (basic composition). Contributions are bounded per
subject across all groups together.

Composition is basic (sequential): a subject's loss over a period is the sum
of the epsilons of the releases that read them, the same pure-DP unit the
device's local-DP ledger uses. ``mean`` spends ``epsilon/2`` on a noisy sum
and ``epsilon/2`` on a noisy count and divides (consistent, not exactly
unbiased for small counts). The release never states how many subjects were
read (that number is not private).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from iotguard.errors import ConfigError

__all__ = ["STATISTICS", "CentralQuery", "Charger", "Release", "bound_contributions", "release", "release_grouped"]

STATISTICS = ("count", "sum", "mean", "histogram", "quantile")
#: Most candidates a quantile scores; most groups of a grouped release.
MAX_CANDIDATES = 1001
MAX_GROUPS = 256


class Charger(Protocol):
    """What a release charges before it draws noise (a subject ledger bound to ``central``)."""

    def charge_all(self, subjects: Sequence[str], epsilon: float, purpose: str, at: datetime) -> int:
        """Charge every subject or none. Raises BudgetExhausted when refused."""
        ...
#: Largest per-subject contribution bound a query may ask for.
MAX_PER_SUBJECT = 1000
#: Most categories a histogram may name.
MAX_CATEGORIES = 256


@dataclass(frozen=True)
class CentralQuery:
    """A small structured central-DP query.

    Attributes:
        statistic: One of :data:`STATISTICS`.
        epsilon: Privacy loss charged to every subject read.
        lo, hi: Clamping bounds of the value (``sum`` and ``mean``).
        categories: The histogram's categories (values outside count as ``"other"``).
        max_per_subject: Rows kept per subject (contribution bound).
        alpha: The quantile (``0.5``: median).
        candidates: How many evenly spaced candidates over ``[lo, hi]`` a quantile scores.
    """

    statistic: str
    epsilon: float
    lo: float = 0.0
    hi: float = 0.0
    categories: tuple[str, ...] = ()
    max_per_subject: int = 1
    alpha: float = 0.5
    candidates: int = 101

    def validate(self) -> None:
        """Raises :class:`ConfigError` with the reason when the query is malformed."""
        if self.statistic not in STATISTICS:
            raise ConfigError(f"unknown statistic {self.statistic!r} (one of {', '.join(STATISTICS)})")
        if not (isinstance(self.epsilon, int | float) and math.isfinite(self.epsilon) and 0 < self.epsilon <= 10):
            raise ConfigError("epsilon must be in (0, 10]")
        if not (isinstance(self.max_per_subject, int) and 1 <= self.max_per_subject <= MAX_PER_SUBJECT):
            raise ConfigError(f"max_per_subject must be 1..{MAX_PER_SUBJECT}")
        if self.statistic in ("sum", "mean", "quantile") and not (
            math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi
        ):
            raise ConfigError("sum, mean and quantile need finite bounds lo < hi")
        if self.statistic == "quantile" and not (
            0 <= self.alpha <= 1 and isinstance(self.candidates, int) and 2 <= self.candidates <= MAX_CANDIDATES
        ):
            raise ConfigError(f"quantile needs 0 <= alpha <= 1 and 2..{MAX_CANDIDATES} candidates")
        if self.statistic == "histogram":
            if not 1 <= len(self.categories) <= MAX_CATEGORIES or len(set(self.categories)) != len(self.categories):
                raise ConfigError(f"histogram needs 1..{MAX_CATEGORIES} distinct categories")
            if "other" in self.categories:
                raise ConfigError("'other' is reserved for values outside the categories")


@dataclass(frozen=True)
class Release:
    """A differentially private answer.

    ``ci95`` is the half-width of a 95 % interval of the noise (``b ln 20``
    for Laplace scale ``b``; for a histogram, per bin); ``None`` for ``mean``.
    """

    statistic: str
    value: float | dict[str, float]
    epsilon: float
    noise_scale: float
    ci95: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return dict(self.__dict__)


def bound_contributions(rows: Sequence[tuple[str, Any]], max_per_subject: int) -> tuple[list[str], list[Any]]:
    """Keep at most ``max_per_subject`` rows per subject (first ones); returns (subjects, values)."""
    seen: dict[str, int] = {}
    subjects: list[str] = []
    values: list[Any] = []
    for subject, value in rows:
        n = seen.get(subject, 0)
        if n < max_per_subject:
            seen[subject] = n + 1
            subjects.append(subject)
            values.append(value)
    return subjects, values


def _calibrated(make: Callable[[float], Any], d_in: int, epsilon: float) -> tuple[Any, float]:
    import opendp.prelude as dp

    scale = float(dp.binary_search_param(make, d_in=d_in, d_out=epsilon, T=float))
    m = make(scale)
    if float(m.map(d_in)) > epsilon * (1 + 1e-9):
        raise ConfigError(f"OpenDP measurement map exceeds epsilon {epsilon}")
    return m, scale


@functools.lru_cache(maxsize=64)
def _plan(q: CentralQuery, epsilon: float) -> tuple[Callable[[list[Any]], Any], float]:
    """An OpenDP measurement for one statistic at ``epsilon``, and its noise scale."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    d_in = q.max_per_subject
    floats = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    strings = dp.vector_domain(dp.atom_domain(T=str)), dp.symmetric_distance()
    if q.statistic == "count":
        m, scale = _calibrated(lambda s: strings >> dp.t.then_count() >> dp.m.then_laplace(s), d_in, epsilon)
        return (lambda vs: float(m(["x"] * len(vs)))), scale
    if q.statistic == "sum":
        then_sum: Any = dp.t.then_sum
        m, scale = _calibrated(
            lambda s: floats >> dp.t.then_clamp((q.lo, q.hi)) >> then_sum() >> dp.m.then_laplace(s), d_in, epsilon)
        return (lambda vs: float(m([float(v) for v in vs]))), scale
    if q.statistic == "quantile":
        step = (q.hi - q.lo) / (q.candidates - 1)
        cands = [q.lo + i * step for i in range(q.candidates - 1)] + [q.hi]
        m, scale = _calibrated(
            lambda s: floats >> dp.t.then_quantile_score_candidates(cands, q.alpha)
            >> dp.m.then_noisy_max(dp.max_divergence(), s, negate=True), d_in, epsilon)
        return (lambda vs: cands[int(m([float(v) for v in vs]))]), scale
    cats = list(q.categories)
    m, scale = _calibrated(
        lambda s: strings >> dp.t.then_count_by_categories(categories=cats) >> dp.m.then_laplace(s),
        d_in, epsilon)

    def histogram(vs: list[Any]) -> dict[str, float]:
        counts = m([str(v) for v in vs])
        return {c: float(n) for c, n in zip([*cats, "other"], counts, strict=True)}

    return histogram, scale


def _numeric(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError("sum and mean read a numeric field; a value is not a finite number")
        out.append(float(v))
    return out


def release(query: CentralQuery, rows: Sequence[tuple[str, Any]], ledger: Charger,
            purpose: str, at: datetime) -> Release:
    """Answer ``query`` over ``(subject, value)`` rows, charging every subject first.

    Raises:
        ConfigError: malformed query or non-numeric value for sum/mean.
        BudgetExhausted: some subject's budget would be exceeded; nothing is
            spent and no noise is drawn.
    """
    query.validate()
    subjects, values = bound_contributions(rows, query.max_per_subject)
    if query.statistic in ("sum", "mean", "quantile"):
        values = _numeric(values)
    if query.statistic == "mean":
        total, s_scale = _plan(CentralQuery("sum", query.epsilon / 2, query.lo, query.hi,
                                            max_per_subject=query.max_per_subject), query.epsilon / 2)
        count, _ = _plan(CentralQuery("count", query.epsilon / 2, max_per_subject=query.max_per_subject),
                         query.epsilon / 2)
        ledger.charge_all(subjects, query.epsilon, purpose, at)
        s, n = total(values), count(values)
        mean = min(query.hi, max(query.lo, s / max(1.0, n)))
        return Release("mean", mean, query.epsilon, s_scale, None)
    run, scale = _plan(query, query.epsilon)
    ledger.charge_all(subjects, query.epsilon, purpose, at)
    ci = None if query.statistic == "quantile" else scale * math.log(20)
    return Release(query.statistic, run(values), query.epsilon, scale, ci)


def release_grouped(query: CentralQuery, groups: Sequence[str], rows: Sequence[tuple[str, str, Any]],
                    ledger: Charger, purpose: str, at: datetime) -> dict[str, Release]:
    """Answer ``query`` per group over ``(subject, group, value)`` rows; rows of other groups are ignored.

    Raises:
        ConfigError: malformed query or groups, or non-numeric values.
        BudgetExhausted: some subject's budget would be exceeded (nothing spent).
    """
    query.validate()
    names = [str(g) for g in groups]
    if not 1 <= len(names) <= MAX_GROUPS or len(set(names)) != len(names):
        raise ConfigError(f"group by needs 1..{MAX_GROUPS} distinct groups")
    wanted = set(names)
    kept = [(s, (g, v)) for s, g, v in rows if g in wanted]
    subjects, pairs = bound_contributions(kept, query.max_per_subject)
    if query.statistic == "count":
        hist = CentralQuery("histogram", query.epsilon, categories=tuple(names),
                            max_per_subject=query.max_per_subject)
        run, scale = _plan(hist, query.epsilon)
        ledger.charge_all(subjects, query.epsilon, purpose, at)
        counts = run([g for g, _ in pairs])
        return {g: Release("count", counts[g], query.epsilon, scale, scale * math.log(20)) for g in names}
    share = query.epsilon / len(names)
    per_group = {g: [("", v) for gg, v in pairs if gg == g] for g in names}
    for vs in per_group.values():
        if query.statistic in ("sum", "mean", "quantile"):
            _numeric([v for _, v in vs])
    sub = CentralQuery(query.statistic, share, query.lo, query.hi, query.categories, query.max_per_subject,
                       query.alpha, query.candidates)
    sub.validate()
    ledger.charge_all(subjects, query.epsilon, purpose, at)
    spent = _Spent()
    return {g: release(sub, _distinct(vs), spent, purpose, at) for g, vs in per_group.items()}


class _Spent:
    """The grouped release charged the whole epsilon up front; its per-group releases charge nothing more."""

    def charge_all(self, subjects: Sequence[str], epsilon: float, purpose: str, at: datetime) -> int:
        return len(set(subjects))


def _distinct(values: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    # Rows are already bounded per subject; give each its own key so they are not bounded again.
    return [(str(i), v) for i, (_, v) in enumerate(values)]
