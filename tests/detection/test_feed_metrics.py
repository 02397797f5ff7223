"""Threat feed parsing and lookups; ROC AUC and TPR at a fixed FPR."""

from __future__ import annotations

import numpy as np
import pytest

from iotguard.detection import parse_feed, roc_auc, tpr_at_fpr
from iotguard.errors import ConfigError, MalformedError


def test_feed_matches_addresses_and_networks() -> None:
    feed = parse_feed(b"# botnet C2\n203.0.113.66\n198.51.100.0/24  # sinkhole\n\n2001:db8:bad::/48\n")
    assert len(feed) == 3
    assert str(feed.match("203.0.113.66")) == "203.0.113.66/32"
    assert str(feed.match("198.51.100.200")) == "198.51.100.0/24"
    assert feed.match("2001:db8:bad:1::5") is not None
    assert feed.match("203.0.113.67") is None and feed.match("not-an-ip") is None


@pytest.mark.parametrize(("data", "code"), [
    (b"203.0.113.300\n", "feed_bad_entry"), (b"10.0.0.1/8\n", "feed_bad_entry"),
    (b"\xff\n", "feed_not_utf8"), (b"1" * 200 + b"\n", "feed_line_too_long"),
])
def test_feed_rejections(data, code) -> None:
    with pytest.raises(MalformedError) as err:
        parse_feed(data)
    assert err.value.code == code


def test_roc_auc_known_values() -> None:
    pos = np.array([True, True, False, False])
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), pos) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), pos) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), pos) == 0.5  # ties count half
    assert roc_auc(np.array([0.9, 0.3, 0.5, 0.1]), pos) == 0.75
    with pytest.raises(ConfigError):
        roc_auc(np.array([1.0]), np.array([True]))


def test_tpr_at_fpr() -> None:
    rng = np.random.default_rng(0)
    neg = rng.normal(0, 1, 1000)
    pos = np.r_[rng.normal(10, 1, 90), rng.normal(0, 1, 10)]
    scores = np.r_[neg, pos]
    truth = np.r_[np.zeros(1000, bool), np.ones(100, bool)]
    assert 0.9 <= tpr_at_fpr(scores, truth, 0.01) <= 0.93
    # at most 1 % of negatives above the chosen threshold
    assert tpr_at_fpr(scores, truth, 0.0) >= 0.89
