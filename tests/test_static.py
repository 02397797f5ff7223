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


def test_suite_is_self_contained() -> None:
    """A clone anywhere passes: no test reads files beside the repository, and no test or bench
    reads the known-answer vectors from there (issue 10). Benchmarks may take evaluation data
    sets (spoken digits, Zeek logs) by path, defaulting to the shared data folder beside it."""
    from tests.conftest import VECTORS_DIR

    assert VECTORS_DIR.is_relative_to(REPO_ROOT)
    # Spelled in pieces so that this file does not match itself.
    shared = "/".join(("..", "shared"))
    vectors = ("/".join(("shared", "vectors")), "_".join(("IOTGUARD", "VECTORS")))
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for folder, words in (("tests", (shared, *vectors)), ("bench", vectors))
        for path in (REPO_ROOT / folder).rglob("*.py")
        if any(word in path.read_text(encoding="utf-8") for word in words)
    ]
    assert offenders == []
    for name in ("README.md", "ascon/LICENSE", "merkle/LICENSE"):
        assert (VECTORS_DIR / name).is_file(), name
