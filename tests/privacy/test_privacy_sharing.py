"""Sharing: Mondrian k-anonymity, l-diversity and a linkage attack on the extract."""

from __future__ import annotations

import random

import pytest

from iotguard.errors import ConfigError, PolicyDenied
from iotguard.privacy import DIRECT_IDENTIFIERS, check_l_diversity, l_diversity, linkage_attack, mondrian, risk_report


def _population(n: int = 1200, seed: int = 4) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(
            {
                "person": f"p{i}",
                "age": rng.randint(18, 90),
                "zip": rng.choice(["10115", "10117", "10119", "10178", "10179", "10243", "10245"]),
                "model": rng.choice(["wear-1", "thermo-1", "meter-1"]),
                "avg_heart_rate": rng.choice(["low", "normal", "high", "very high"]),
            }
        )
    return rows


@pytest.mark.parametrize("k", [2, 5, 10, 25])
def test_every_class_has_at_least_k_and_no_identifier_leaks(k: int) -> None:
    rows = _population()
    table = mondrian(rows, ["age", "zip", "model"], k, keep=["avg_heart_rate"])
    assert all(len(c.members) >= k for c in table.classes)
    assert sorted(m for c in table.classes for m in c.members) == list(range(len(rows)))
    assert all("person" not in r for r in table.records)
    assert "person" not in table.to_csv() and "p17" not in table.to_json()


def test_linkage_attack_reidentifies_no_record_above_one_over_k() -> None:
    """Check for a linkage attack: the attacker knows everyone's exact quasi-identifiers."""
    rows = _population()
    k = 10
    table = mondrian(rows, ["age", "zip", "model"], k, keep=["avg_heart_rate"])
    result = linkage_attack(table, rows, rng=random.Random(1))
    assert result.targets == len(rows)
    assert result.max_probability <= 1 / k
    assert result.expected_success_rate <= 1 / k
    # the simulated attack agrees with the exact expectation (binomial, 5 sd)
    n, p = result.targets, result.expected_success_rate
    assert abs(result.simulated_hits - n * p) <= 5 * (n * p * (1 - p)) ** 0.5 + 1


def test_risk_report_measures_the_extract() -> None:
    rows = _population()
    table = mondrian(rows, ["age", "zip"], 10, keep=["avg_heart_rate"])
    rep = risk_report(table, rows, sensitive="avg_heart_rate")
    assert rep.smallest_class >= 10 and rep.max_risk <= 0.1
    assert rep.average_risk == pytest.approx(len(table.classes) / len(rows))
    assert rep.subjects_above_threshold == 0
    assert rep.l_diversity is not None and rep.l_diversity >= 1
    assert "max risk" in rep.render()


def test_l_diversity_check_and_l_diverse_partitioning() -> None:
    rows = [{"age": 20 + i, "diag": "flu" if i < 10 else "ok"} for i in range(20)]
    plain = mondrian(rows, ["age"], 10, keep=["diag"])
    with pytest.raises(PolicyDenied, match="1-diverse"):
        check_l_diversity(plain, rows, "diag", 2)
    diverse = mondrian(rows, ["age"], 5, keep=["diag"], sensitive="diag", l=2)
    check_l_diversity(diverse, rows, "diag", 2)


def test_too_few_records_or_bad_parameters() -> None:
    with pytest.raises(PolicyDenied):
        mondrian([{"a": 1}] * 3, ["a"], 5)
    with pytest.raises(ConfigError):
        mondrian([{"a": 1}] * 3, ["a"], 1)
    with pytest.raises(ConfigError):
        mondrian([{"a": 1}] * 3, [], 2)


def _fleet(devices: int = 200, readings: int = 25, seed: int = 7) -> list[dict[str, object]]:
    """``devices`` people x ``readings`` readings each, in arrival order (round robin)."""
    rng = random.Random(seed)
    people = [
        {"device_id": f"d{d}", "owner": f"o{d}", "age": rng.randint(18, 90), "zip": rng.choice("ABCDEFG")}
        for d in range(devices)
    ]
    return [
        {**p, "hour": rng.randrange(24), "steps": rng.choice(["low", "mid", "high"])}
        for _ in range(readings)
        for p in people
    ]


def test_k_is_counted_over_data_subjects_not_readings() -> None:
    """Issue 14: at k=5 most classes held fewer than 5 distinct devices when k counted rows."""
    rows = _fleet()
    table = mondrian(rows, ["age", "zip", "hour"], 5, keep=["steps"], subject="device_id",
                     rng=random.Random(1))
    for c in table.classes:
        assert len({rows[i]["device_id"] for i in c.members}) >= 5
    rep = risk_report(table, rows)
    assert rep.subjects == 200 and rep.records == 5000
    assert rep.smallest_class >= 5 and rep.max_risk <= 0.2 and rep.subjects_above_threshold == 0
    # the row-counting partition of the same data is what the fix prevents
    rowwise = mondrian(rows, ["age", "zip", "hour"], 5, keep=["steps"], rng=random.Random(1))
    assert min(len({rows[i]["device_id"] for i in c.members}) for c in rowwise.classes) < 5


def test_l_is_counted_over_data_subjects() -> None:
    """One person's many different values are one person: they cannot make a class diverse alone."""
    rows = [{"s": "a", "q": 1, "v": v} for v in ("x", "y", "z")]
    rows += [{"s": f"b{i}", "q": 1, "v": "x"} for i in range(4)]
    table = mondrian(rows, ["q"], 2, keep=["v"], subject="s")
    assert l_diversity(table, rows, "v") == 2  # 'x' by a b-subject, one of y/z by 'a'
    with pytest.raises(PolicyDenied):
        mondrian(rows, ["q"], 2, keep=["v"], subject="s", sensitive="v", l=3)


@pytest.mark.parametrize("column", ["device_id", "owner"])
def test_direct_identifiers_are_never_quasi_identifiers_or_published(column: str) -> None:
    rows = _fleet(devices=20, readings=2)
    assert column in DIRECT_IDENTIFIERS
    with pytest.raises(ConfigError):
        mondrian(rows, ["age", column], 2, subject="device_id")
    with pytest.raises(ConfigError):
        mondrian(rows, ["age"], 2, keep=[column], subject="device_id")
    with pytest.raises(ConfigError):  # the subject column itself, whatever its name
        mondrian([{**r, "who": r["device_id"]} for r in rows], ["age", "who"], 2, subject="who")


def test_row_order_does_not_reveal_arrival_order() -> None:
    """An attacker who knows QIs + arrival times does no better than a random guess within a class."""
    rows = _fleet(devices=60, readings=5)
    table = mondrian(rows, ["age", "zip"], 5, keep=["steps"], subject="device_id", rng=random.Random(3))
    rep = risk_report(table, rows)
    assert rep.arrival_attack_success <= rep.arrival_attack_baseline + 0.05
    assert rep.arrival_attack_baseline < 0.35
    # classes are not published in input order either
    firsts = [min(c.members) for c in table.classes]
    assert firsts != sorted(firsts)
