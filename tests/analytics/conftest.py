"""Fixtures the analytics tests share with the privacy and hub tests."""

from tests.hub.conftest import hub  # noqa: F401
from tests.privacy.conftest import clock, make_pipeline  # noqa: F401
