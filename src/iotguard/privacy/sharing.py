"""Sharing extracts: Mondrian k-anonymity, l-diversity and measured re-identification risk.

:func:`mondrian` implements strict multidimensional Mondrian partitioning
(LeFevre, DeWitt and Ramakrishnan, ICDE 2006): recursively split the
records at the median of the quasi-identifier with the widest normalised
range, as long as both halves keep at least ``k`` records (and, if asked,
``l`` distinct sensitive values). Each final partition becomes one
equivalence class whose quasi-identifiers are published as a range
(numbers) or a set (categories). Only the quasi-identifiers and the
columns named in ``keep`` are published: every other column, in particular
direct identifiers, is left out (fail closed).

k-anonymity bounds what a linking attacker gets, not what they infer about
a homogeneous class; :func:`check_l_diversity` checks the latter, and
:func:`risk_report` / :func:`linkage_attack` measure the risk of the extract
actually produced rather than trusting ``k``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iotguard.errors import ConfigError, MalformedError, PolicyDenied

__all__ = [
    "AnonymisedTable",
    "EquivalenceClass",
    "LinkageResult",
    "RiskReport",
    "check_l_diversity",
    "l_diversity",
    "linkage_attack",
    "mondrian",
    "risk_report",
]

Box = tuple[float, float] | frozenset[str]


@dataclass(frozen=True)
class EquivalenceClass:
    """Records that share one generalised quasi-identifier box."""

    box: Mapping[str, Box]
    members: tuple[int, ...]  # indices into the input records

    def generalised(self) -> dict[str, str]:
        """Published quasi-identifier values of this class."""
        out = {}
        for qi, b in self.box.items():
            if isinstance(b, frozenset):
                out[qi] = next(iter(b)) if len(b) == 1 else "{" + "|".join(sorted(b)) + "}"
            else:
                lo, hi = b
                out[qi] = f"{lo:g}" if lo == hi else f"[{lo:g}-{hi:g}]"
        return out

    def contains(self, record: Mapping[str, Any]) -> bool:
        """Whether a record's exact quasi-identifiers fall in this class's box."""
        for qi, b in self.box.items():
            v: Any = record.get(qi)
            if isinstance(b, frozenset):
                if str(v) not in b:
                    return False
            elif not (_is_number(v) and b[0] <= float(v) <= b[1]):
                return False
        return True


@dataclass(frozen=True)
class AnonymisedTable:
    """A k-anonymous extract.

    Attributes:
        records: Published rows (generalised quasi-identifiers + kept columns),
            grouped by class.
        classes: The equivalence classes; ``classes[i].members`` index the
            input records (kept for risk measurement, never published).
    """

    quasi_identifiers: tuple[str, ...]
    kept: tuple[str, ...]
    k: int
    records: tuple[Mapping[str, Any], ...]
    classes: tuple[EquivalenceClass, ...]

    def to_json(self) -> str:
        """The extract as a JSON document."""
        return json.dumps(
            {
                "k": self.k,
                "quasi_identifiers": list(self.quasi_identifiers),
                "columns": [*self.quasi_identifiers, *self.kept],
                "records": [dict(r) for r in self.records],
            },
            indent=1,
            default=str,
        )

    def to_csv(self) -> str:
        """The extract as CSV text with a header row."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[*self.quasi_identifiers, *self.kept], lineterminator="\n")
        w.writeheader()
        for r in self.records:
            w.writerow(dict(r))
        return buf.getvalue()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def mondrian(
    records: Sequence[Mapping[str, Any]],
    quasi_identifiers: Sequence[str],
    k: int,
    *,
    keep: Sequence[str] = (),
    sensitive: str | None = None,
    l: int = 1,  # noqa: E741 - the standard name of the parameter
) -> AnonymisedTable:
    """Partition ``records`` into equivalence classes of at least ``k``.

    Args:
        records: Input rows.
        quasi_identifiers: Columns an attacker could know from elsewhere.
            A column whose values are all numbers is generalised to ranges,
            any other to sets of values.
        k: Minimum class size.
        keep: Extra columns to publish unchanged (e.g. the sensitive one).
        sensitive: Sensitive column for the l-diversity split rule.
        l: Each class must hold at least ``l`` distinct ``sensitive`` values.

    Raises:
        ConfigError: ``k < 2``, no quasi-identifiers, or ``l > 1`` without ``sensitive``.
        MalformedError: a record lacks a quasi-identifier or a kept column.
        PolicyDenied: the records cannot form even one class of ``k``
            (or of ``l`` distinct sensitive values).
    """
    if k < 2:
        raise ConfigError("k-anonymity needs k >= 2")
    if not quasi_identifiers:
        raise ConfigError("name at least one quasi-identifier")
    if l > 1 and sensitive is None:
        raise ConfigError("l-diversity needs a sensitive column")
    qis = tuple(quasi_identifiers)
    for i, r in enumerate(records):
        for c in (*qis, *keep, *((sensitive,) if sensitive else ())):
            if c not in r or r[c] is None:
                raise MalformedError(f"record {i} has no value for {c!r}")
    numeric = {q: all(_is_number(r[q]) for r in records) for q in qis}
    # Categories are ordered (sorted) so that they can be split at a median too.
    codes: dict[str, dict[str, int]] = {
        q: {v: i for i, v in enumerate(sorted({str(r[q]) for r in records}))} for q in qis if not numeric[q]
    }

    def key(i: int, q: str) -> float:
        return float(records[i][q]) if numeric[q] else float(codes[q][str(records[i][q])])

    def diverse(part: Sequence[int]) -> bool:
        return sensitive is None or len({str(records[i][sensitive]) for i in part}) >= l

    all_idx = list(range(len(records)))
    if len(records) < k or not diverse(all_idx):
        raise PolicyDenied(f"{len(records)} records cannot form a class of k={k} (l={l})")
    spans = {q: (max(key(i, q) for i in all_idx) - min(key(i, q) for i in all_idx)) or 1.0 for q in qis}
    finished: list[list[int]] = []
    stack = [all_idx]
    while stack:
        part = stack.pop()
        order = sorted(
            qis, key=lambda q: -(max(key(i, q) for i in part) - min(key(i, q) for i in part)) / spans[q]
        )
        for q in order:
            vals = sorted(key(i, q) for i in part)
            if vals[0] == vals[-1]:
                continue
            median = vals[(len(vals) - 1) // 2]
            left = [i for i in part if key(i, q) <= median]
            right = [i for i in part if key(i, q) > median]
            if len(left) >= k and len(right) >= k and diverse(left) and diverse(right):
                stack.extend((left, right))
                break
        else:
            finished.append(part)
    classes: list[EquivalenceClass] = []
    out: list[dict[str, Any]] = []
    for part in sorted(finished, key=lambda p: min(p)):
        box: dict[str, Box] = {}
        for q in qis:
            if numeric[q]:
                vs = [float(records[i][q]) for i in part]
                box[q] = (min(vs), max(vs))
            else:
                box[q] = frozenset(str(records[i][q]) for i in part)
        ec = EquivalenceClass(box, tuple(sorted(part)))
        classes.append(ec)
        gen = ec.generalised()
        for i in ec.members:
            out.append({**gen, **{c: records[i][c] for c in keep}})
    return AnonymisedTable(qis, tuple(keep), k, tuple(out), tuple(classes))


def l_diversity(table: AnonymisedTable, records: Sequence[Mapping[str, Any]], sensitive: str) -> int:
    """Smallest number of distinct ``sensitive`` values in any class (distinct l-diversity)."""
    return min(len({str(records[i][sensitive]) for i in c.members}) for c in table.classes)


def check_l_diversity(
    table: AnonymisedTable,
    records: Sequence[Mapping[str, Any]],
    sensitive: str,
    l: int,  # noqa: E741 - the standard name of the parameter
) -> None:
    """Check that every class holds at least ``l`` distinct sensitive values.

    Raises:
        PolicyDenied: some class is less diverse (its members' sensitive value
            could be inferred by anyone who links a person to the class).
    """
    got = l_diversity(table, records, sensitive)
    if got < l:
        raise PolicyDenied(f"extract is only {got}-diverse in {sensitive!r}, {l} required")


@dataclass(frozen=True)
class RiskReport:
    """Measured re-identification risk of an extract (prosecutor model)."""

    records: int
    classes: int
    smallest_class: int
    max_risk: float  # 1 / smallest class
    average_risk: float  # mean over records of 1 / |class|
    records_above_threshold: int  # records whose risk exceeds ``threshold``
    threshold: float
    l_diversity: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return dict(self.__dict__)

    def render(self) -> str:
        """A short human-readable report."""
        lines = [
            f"records              {self.records}",
            f"equivalence classes  {self.classes}",
            f"smallest class (k)   {self.smallest_class}",
            f"max risk             {self.max_risk:.4f}",
            f"average risk         {self.average_risk:.4f}",
            f"records above {self.threshold:.3f} {self.records_above_threshold}",
        ]
        if self.l_diversity is not None:
            lines.append(f"l-diversity          {self.l_diversity}")
        return "\n".join(lines)


def risk_report(
    table: AnonymisedTable,
    records: Sequence[Mapping[str, Any]] | None = None,
    *,
    sensitive: str | None = None,
    threshold: float | None = None,
) -> RiskReport:
    """Measure the re-identification risk of ``table``.

    ``threshold`` defaults to ``1/k``. l-diversity is measured when both
    ``records`` and ``sensitive`` are given.
    """
    sizes = [len(c.members) for c in table.classes]
    n = sum(sizes)
    thr = 1 / table.k if threshold is None else threshold
    return RiskReport(
        records=n,
        classes=len(sizes),
        smallest_class=min(sizes),
        max_risk=1 / min(sizes),
        average_risk=len(sizes) / n,
        records_above_threshold=sum(s for s in sizes if 1 / s > thr + 1e-12),
        threshold=thr,
        l_diversity=l_diversity(table, records, sensitive) if records is not None and sensitive else None,
    )


@dataclass(frozen=True)
class LinkageResult:
    """Outcome of a simulated linkage attack."""

    targets: int
    max_probability: float  # highest chance the attacker picks any one target's record
    expected_success_rate: float  # mean over targets of that chance
    simulated_hits: int  # targets re-identified in one simulated run


def linkage_attack(
    table: AnonymisedTable,
    ground_truth: Sequence[Mapping[str, Any]],
    *,
    rng: random.Random | None = None,
) -> LinkageResult:
    """Simulate an attacker who knows every target's exact quasi-identifiers.

    ``ground_truth[i]`` is the person behind input record ``i``. For each
    target the attacker collects the published records whose class box
    contains the target's quasi-identifiers and guesses one uniformly; the
    guess is right when it is the target's own record. Returns the exact
    per-target success probabilities (max and mean) and one simulated run.
    """
    rng = rng or random.Random(0)
    owner: dict[int, int] = {}
    for ci, c in enumerate(table.classes):
        for m in c.members:
            owner[m] = ci
    probs: list[float] = []
    hits = 0
    for i, person in enumerate(ground_truth):
        candidates = [ci for ci, c in enumerate(table.classes) if c.contains(person)]
        pool = sum(len(table.classes[ci].members) for ci in candidates)
        mine = owner.get(i)
        if pool == 0 or mine not in candidates:
            probs.append(0.0)
            continue
        probs.append(1 / pool)
        if rng.random() < 1 / pool:
            hits += 1
    return LinkageResult(len(probs), max(probs, default=0.0), sum(probs) / max(1, len(probs)), hits)
