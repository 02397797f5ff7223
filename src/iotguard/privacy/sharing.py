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

People, not rows: a data subject (a device's owner) contributes many
readings, so ``k`` and ``l`` are counted over distinct *subjects*
(``subject=`` names the column; one person's many readings are one
individual). Direct identifiers (:data:`DIRECT_IDENTIFIERS` and the subject
column) can never be quasi-identifiers or published columns. Published rows
are shuffled inside each class and the classes themselves are shuffled, so
an attacker who knows when each reading arrived learns nothing from the
row order (:func:`risk_report` measures exactly that attacker).

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
    "DIRECT_IDENTIFIERS",
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

#: Column names that identify a person directly: never quasi-identifiers, never published.
DIRECT_IDENTIFIERS = frozenset({
    "device_id", "owner", "owner_id", "subject", "subject_id", "person", "person_id", "name",
    "email", "phone", "serial", "user", "user_id", "username", "ip", "ip_address", "mac",
})


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
        sources: Input index of each published row (risk measurement only,
            never published).
        subjects: Data subject of each input record (risk measurement only,
            never published; the record index itself when no subject column).
    """

    quasi_identifiers: tuple[str, ...]
    kept: tuple[str, ...]
    k: int
    records: tuple[Mapping[str, Any], ...]
    classes: tuple[EquivalenceClass, ...]
    sources: tuple[int, ...] = ()
    subjects: tuple[str, ...] = ()

    def subjects_in(self, c: EquivalenceClass) -> int:
        """Distinct data subjects in class ``c``."""
        return len({self.subjects[i] for i in c.members})

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


def _matched_values(pairs: Sequence[tuple[str, str]]) -> int:
    """Distinct values held by distinct subjects: a maximum matching of values to subjects.

    ``pairs`` are (subject, value). One subject holding five values counts once.
    """
    holders: dict[str, set[str]] = {}
    for subj, v in pairs:
        holders.setdefault(v, set()).add(subj)
    taken: dict[str, str] = {}  # subject -> value matched to it

    def augment(v: str, seen: set[str]) -> bool:
        for subj in holders[v]:
            if subj in seen:
                continue
            seen.add(subj)
            if subj not in taken or augment(taken[subj], seen):
                taken[subj] = v
                return True
        return False

    return sum(1 for v in holders if augment(v, set()))


def mondrian(
    records: Sequence[Mapping[str, Any]],
    quasi_identifiers: Sequence[str],
    k: int,
    *,
    keep: Sequence[str] = (),
    sensitive: str | None = None,
    l: int = 1,  # noqa: E741 - the standard name of the parameter
    subject: str | None = None,
    rng: random.Random | None = None,
) -> AnonymisedTable:
    """Partition ``records`` into equivalence classes of at least ``k`` data subjects.

    Args:
        records: Input rows.
        quasi_identifiers: Columns an attacker could know from elsewhere.
            A column whose values are all numbers is generalised to ranges,
            any other to sets of values.
        k: Minimum class size.
        keep: Extra columns to publish unchanged (e.g. the sensitive one).
        sensitive: Sensitive column for the l-diversity split rule.
        l: Each class must hold at least ``l`` distinct ``sensitive`` values,
            held by distinct subjects.
        subject: Column naming each record's data subject; ``k`` and ``l``
            count subjects, not rows. ``None`` only when every record is a
            different person. The column is never published.
        rng: Shuffles rows and classes (default: the OS's CSPRNG).

    Raises:
        ConfigError: ``k < 2``, no quasi-identifiers, ``l > 1`` without
            ``sensitive``, or a direct identifier named as a quasi-identifier
            or published column.
        MalformedError: a record lacks a quasi-identifier, kept or subject column.
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
    direct = DIRECT_IDENTIFIERS | ({subject} if subject else set())
    named = sorted(c for c in {*qis, *keep, *((sensitive,) if sensitive else ())} if c in direct)
    if named:
        raise ConfigError(f"direct identifiers cannot be quasi-identifiers or published: {', '.join(named)}")
    for i, r in enumerate(records):
        for c in (*qis, *keep, *((sensitive,) if sensitive else ()), *((subject,) if subject else ())):
            if c not in r or r[c] is None:
                raise MalformedError(f"record {i} has no value for {c!r}")
    numeric = {q: all(_is_number(r[q]) for r in records) for q in qis}
    # Categories are ordered (sorted) so that they can be split at a median too.
    codes: dict[str, dict[str, int]] = {
        q: {v: i for i, v in enumerate(sorted({str(r[q]) for r in records}))} for q in qis if not numeric[q]
    }

    def key(i: int, q: str) -> float:
        return float(records[i][q]) if numeric[q] else float(codes[q][str(records[i][q])])

    subj = tuple(str(r[subject]) for r in records) if subject else tuple(str(i) for i in range(len(records)))

    def big(part: Sequence[int]) -> bool:
        return len({subj[i] for i in part}) >= k

    def diverse(part: Sequence[int]) -> bool:
        if sensitive is None or l <= 1:
            return True
        return _matched_values([(subj[i], str(records[i][sensitive])) for i in part]) >= l

    all_idx = list(range(len(records)))
    if not big(all_idx) or not diverse(all_idx):
        raise PolicyDenied(f"{len(set(subj))} data subjects cannot form a class of k={k} (l={l})")
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
            if big(left) and big(right) and diverse(left) and diverse(right):
                stack.extend((left, right))
                break
        else:
            finished.append(part)
    shuffler = rng or random.SystemRandom()
    shuffler.shuffle(finished)
    classes: list[EquivalenceClass] = []
    out: list[dict[str, Any]] = []
    sources: list[int] = []
    for part in finished:
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
        rows = list(ec.members)
        shuffler.shuffle(rows)  # arrival order must not survive into the extract
        for i in rows:
            out.append({**gen, **{c: records[i][c] for c in keep}})
            sources.append(i)
    return AnonymisedTable(qis, tuple(keep), k, tuple(out), tuple(classes), tuple(sources), subj)


def l_diversity(table: AnonymisedTable, records: Sequence[Mapping[str, Any]], sensitive: str) -> int:
    """Smallest number, over classes, of distinct ``sensitive`` values held by distinct subjects."""
    return min(
        _matched_values([(table.subjects[i], str(records[i][sensitive])) for i in c.members])
        for c in table.classes
    )


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
    """Measured re-identification risk of an extract, per data subject.

    The attacker knows a target subject's exact quasi-identifiers and the
    arrival time of each of their readings (prosecutor model). Locating the
    target's classes by quasi-identifier, they pick one of the class's
    subjects: risk ``1 / subjects in the class``; a subject's risk is the
    largest over the classes their readings fall in. Knowing arrival times,
    they also link the ``j``-th published row of a class to the ``j``-th
    arrived reading: ``arrival_attack_success`` is how often that names the
    right subject, next to ``arrival_attack_baseline``, what guessing a row
    of the class at random achieves (equal when the row order carries nothing).
    """

    records: int
    subjects: int
    classes: int
    smallest_class: int  # fewest distinct subjects in a class (the k achieved)
    max_risk: float  # 1 / smallest class
    average_risk: float  # mean over subjects of their risk
    subjects_above_threshold: int  # subjects whose risk exceeds ``threshold``
    threshold: float
    arrival_attack_success: float
    arrival_attack_baseline: float
    l_diversity: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return dict(self.__dict__)

    def render(self) -> str:
        """A short human-readable report."""
        lines = [
            f"records              {self.records}",
            f"data subjects        {self.subjects}",
            f"equivalence classes  {self.classes}",
            f"smallest class (k)   {self.smallest_class} subjects",
            f"max risk             {self.max_risk:.4f}",
            f"average risk         {self.average_risk:.4f}",
            f"subjects above {self.threshold:.3f} {self.subjects_above_threshold}",
            f"arrival-order attack {self.arrival_attack_success:.4f} (random guess {self.arrival_attack_baseline:.4f})",
        ]
        if self.l_diversity is not None:
            lines.append(f"l-diversity          {self.l_diversity}")
        return "\n".join(lines)


def _arrival_attack(table: AnonymisedTable) -> tuple[float, float]:
    """(success, random-guess baseline) of linking rows by arrival order within classes."""
    hits = base = 0.0
    pos = 0
    owner = {m: c for c in table.classes for m in c.members}
    n = len(table.sources)
    while pos < n:
        c = owner[table.sources[pos]]
        size = len(c.members)
        by_arrival = sorted(c.members)  # input order is arrival order
        counts: dict[str, int] = {}
        for m in c.members:
            counts[table.subjects[m]] = counts.get(table.subjects[m], 0) + 1
        for j in range(size):
            truth = table.subjects[table.sources[pos + j]]
            hits += table.subjects[by_arrival[j]] == truth
            base += counts[truth] / size
        pos += size
    return hits / max(1, n), base / max(1, n)


def risk_report(
    table: AnonymisedTable,
    records: Sequence[Mapping[str, Any]] | None = None,
    *,
    sensitive: str | None = None,
    threshold: float | None = None,
) -> RiskReport:
    """Measure the re-identification risk of ``table`` per data subject.

    ``threshold`` defaults to ``1/k``. l-diversity is measured when both
    ``records`` and ``sensitive`` are given.
    """
    per_class = [table.subjects_in(c) for c in table.classes]
    risk: dict[str, float] = {}
    for c, n_subj in zip(table.classes, per_class, strict=True):
        for m in c.members:
            s = table.subjects[m]
            risk[s] = max(risk.get(s, 0.0), 1 / n_subj)
    thr = 1 / table.k if threshold is None else threshold
    success, baseline = _arrival_attack(table)
    return RiskReport(
        records=sum(len(c.members) for c in table.classes),
        subjects=len(risk),
        classes=len(per_class),
        smallest_class=min(per_class),
        max_risk=1 / min(per_class),
        average_risk=sum(risk.values()) / len(risk),
        subjects_above_threshold=sum(1 for r in risk.values() if r > thr + 1e-12),
        threshold=thr,
        arrival_attack_success=success,
        arrival_attack_baseline=baseline,
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
