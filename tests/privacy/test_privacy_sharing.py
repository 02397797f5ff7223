"""Sharing: Mondrian k-anonymity, l-diversity and a linkage attack on the extract."""

from __future__ import annotations

import random

import pytest

from iotguard.errors import ConfigError, PolicyDenied
from iotguard.privacy import check_l_diversity, linkage_attack, mondrian, risk_report


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
    assert rep.records_above_threshold == 0
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
