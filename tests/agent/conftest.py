"""Fixtures shared with the attestation tests (a device on each root of trust, signed releases)."""

from tests.attestation.conftest import device, firmware, other_device  # noqa: F401
