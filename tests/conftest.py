"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _vectors_dir() -> Path:
    env = os.environ.get("IOTGUARD_VECTORS")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """Directory of the official known-answer vectors (``../shared/vectors``).

    Missing vectors fail the test rather than skip it: a crypto suite that
    silently runs no known-answer test is not tested.
    """
    path = _vectors_dir()
    if not path.is_dir():
        pytest.fail(f"known-answer vectors not found at {path}; set IOTGUARD_VECTORS")
    return path
