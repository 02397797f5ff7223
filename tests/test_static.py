"""The code-quality gates from the README: ruff and mypy --strict on src/."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None and subprocess.run([sys.executable, "-m", name, "--version"],
                                                     capture_output=True).returncode != 0:
        pytest.fail(f"{name} is not installed (it is in requirements.lock)")
    return [sys.executable, "-m", name]


def test_ruff_clean() -> None:
    out = subprocess.run([*_tool("ruff"), "check", "src"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_mypy_strict_clean() -> None:
    out = subprocess.run([*_tool("mypy"), "--no-error-summary"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr
