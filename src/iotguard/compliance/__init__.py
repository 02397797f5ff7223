"""Compliance checks of a fleet's live state against ETSI EN 303 645, NIST IR 8259A and the OWASP IoT Top 10."""

from iotguard.compliance.checks import (
    CHECKS,
    STANDARDS,
    Check,
    CheckResult,
    Evidence,
    FleetFacts,
    Requirement,
    Status,
    evaluate,
)

__all__ = ["CHECKS", "STANDARDS", "Check", "CheckResult", "Evidence", "FleetFacts", "Requirement", "Status",
           "evaluate"]
