"""The evaluation harness grades iotguard's detector: the learned score and the flow rules the hub runs."""

from __future__ import annotations

import numpy as np
import pytest

from iotguard.detection import FlowBatch, NewPortRule, ScanFanOutRule, Severity, detector_scores, evaluate_flows
from iotguard.detection.evaluate import EvaluationReport, rule_severity
from iotguard.detection.features import feature_names
from iotguard.sim import traffic

from .conftest import T0


@pytest.fixture(scope="module")
def beaconing() -> EvaluationReport:
    """A device that starts checking in with a command-and-control server every 20 s, late in a 3-hour log."""
    fleet = traffic.make_fleet(per_model=2, segments=1)
    log = traffic.benign_traffic(fleet, T0, 3 * 3600, seed=31).merged(
        traffic.cnc_beacon(fleet[0], T0 + 2.5 * 3600, 1800))
    labels = np.array(["Malicious" if m else "Benign" for m in log.malicious])
    return evaluate_flows(FlowBatch.from_flows(log.flows), labels)


def test_rules_raise_the_beacon_the_learned_score_ranks_among_benign_flows(beaconing: EvaluationReport) -> None:
    """Check that the graded ranking is the detector's: the beaconing and new-port rules flag every check-in."""
    r = beaconing
    assert r.rule_flagged_malicious == r.scored_malicious > 0
    assert r.tpr_at_1pct_fpr_learned < 0.95  # the learned score alone lets check-ins through at 1 % FPR ...
    assert r.tpr_at_1pct_fpr == 1.0  # ... the rules do not
    assert r.auc > r.auc_learned
    assert r.recall == 1.0


def test_learned_grade_is_reported_beside_the_detector_s(beaconing: EvaluationReport) -> None:
    out = beaconing.as_dict()
    assert {"auc", "auc_learned", "tpr_at_1pct_fpr_learned", "rule_flagged", "rule_flagged_malicious"} <= set(out)
    assert 0.5 < out["auc_learned"] <= 1.0  # type: ignore[operator]


def test_flows_rank_by_the_severity_of_the_hub_s_alert_then_by_the_learned_score() -> None:
    normalised = np.array([0.2, 0.9, 1.5, 2.5, 3.5, 1e6, 0.1, 0.3, 0.4])
    rules = np.array([0, 0, 0, 0, 0, 0, int(Severity.LOW), int(Severity.HIGH), int(Severity.CRITICAL)])
    out = detector_scores(normalised, normalised, rules)
    # none < low (a new port) < medium (above threshold) < high (a scan, or 3x the threshold) < critical
    assert list(np.argsort(out)) == [0, 1, 6, 2, 3, 7, 4, 5, 8]
    assert np.array_equal(detector_scores(normalised, normalised, np.zeros(9, np.int64)).argsort(),
                          normalised.argsort())


def test_rule_severity_is_the_highest_of_the_rules_that_hold() -> None:
    rules = [ScanFanOutRule(feature_names()), NewPortRule()]
    hits = {"scan_fanout": np.array([True, False, True, False]), "new_port": np.array([True, True, False, False])}
    assert rule_severity(rules, hits, 4).tolist() == [int(Severity.HIGH), int(Severity.LOW), int(Severity.HIGH), 0]
