"""Appraisal-policy documents are parsed strictly and fail closed."""

from __future__ import annotations

import pytest

from iotguard.attestation import ClaimWeight, load_appraisal_policy
from iotguard.errors import ConfigError

from .conftest import POLICY

MINIMAL = """
[models.m]
stages = { kernel = 4 }
executables = ["kernel"]
[models.m.claims]
executables = "required"
"""


def test_policy_per_model() -> None:
    policy = load_appraisal_policy(POLICY)
    sensor = policy.for_model("sensor-v1")
    assert sensor is not None
    assert sensor.pcr_selection == (0, 4, 10, 11)
    assert sensor.max_age_seconds == 300
    assert sensor.claims["hardware"] is ClaimWeight.REQUIRED
    assert policy.for_model("unknown") is None


def test_minimal_policy_gets_bounded_defaults() -> None:
    model = load_appraisal_policy(MINIMAL).for_model("m")
    assert model is not None
    assert (model.max_age_seconds, model.max_clock_skew_seconds) == (300, 30)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[models]",
        "not toml [",
        MINIMAL + "\n[other]\nx = 1\n",
        MINIMAL.replace('executables = "required"', 'executables = "advisory"'),
        MINIMAL.replace('executables = "required"', 'executables = "maybe"'),
        MINIMAL.replace('executables = "required"', 'secure = "required"'),
        MINIMAL.replace("stages = { kernel = 4 }", "stages = { kernel = 24 }"),
        MINIMAL.replace('executables = ["kernel"]', 'executables = ["initrd"]'),
        MINIMAL.replace("[models.m.claims]", "max_age_seconds = 0\n[models.m.claims]"),
        MINIMAL.replace("[models.m.claims]", "surprise = true\n[models.m.claims]"),
    ],
)
def test_bad_policy_is_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        load_appraisal_policy(text)
