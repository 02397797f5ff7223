"""Run the policy test cases (data files) that ``iotguard policy test`` runs too."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotguard.policy import default_policy_set, run_case_file, shipped_case_files

_HERE = Path(__file__).parent / "cases"
FILES = [*shipped_case_files(), *sorted(_HERE.glob("*.json"))]


def test_case_files_exist() -> None:
    assert shipped_case_files(), "the package must ship policy cases"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_policy_case_file(path: Path) -> None:
    results = run_case_file(path, default_policy_set())
    assert results
    failures = [f"{r.name}: {r.message}" for r in results if not r.passed]
    assert not failures, "\n".join(failures)
