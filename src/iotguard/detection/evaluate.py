"""Evaluation on labeled flow logs: the protocol of Kitsune and N-BaIoT.

Flows are put in time order and run through the feature extractor as a
stream. The learned baselines, and the baselines of the flow rules that
have one (new ports, beaconing peers), are fitted on the flows *not* labeled
malicious within the earliest ``train_share`` of the flows, and every later
flow is scored. As in the hub, a host with fewer than ``min_flows`` learned
flows then goes on learning its rule baselines from its later flows until it
has them (ADR 0709; not from labels: a host that scan fan-out flags is
barred). Labels choose the training rows and grade the result, nothing else.

What is graded is iotguard's detector as the hub runs it (ADR 0707): the
learned score and the flow rules of
:func:`~iotguard.detection.pipeline.flow_rules`. Flows rank first by the
severity of the alert the hub raises over them (the highest of the rules
whose condition holds on the flow, i.e. whose alert reports it, and of the
learned score's own alert), then by their learned score
(:func:`detector_scores`). The learned score alone is graded beside it
(``auc_learned``, ``tpr_at_1pct_fpr_learned``), so what the rules add is
visible.

Reported: ROC AUC, TPR at 1 % FPR, precision / recall / FPR at the
calibrated threshold (normalised score above 1, or a rule's condition),
flows per second through feature extraction, scoring and the rules, and
detection delay per attacking host (first malicious flow to first alert on
that host).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace

import numpy as np
import numpy.typing as npt

from iotguard.detection.alert import Severity
from iotguard.detection.features import FeatureConfig, FeatureExtractor, FeatureMatrix
from iotguard.detection.feed import ThreatFeed
from iotguard.detection.flows import FlowBatch
from iotguard.detection.geo import CountryDatabase
from iotguard.detection.pipeline import DetectorConfig, flow_rules, learn_unjudged
from iotguard.detection.rules import FlowRule
from iotguard.detection.scorer import BaselineScorer, ScorerConfig
from iotguard.errors import ConfigError

__all__ = ["EvaluationReport", "detector_scores", "evaluate_flows", "flag_flows", "is_malicious", "learn_rules",
           "roc_auc", "rule_severity", "tpr_at_fpr"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


def is_malicious(labels: npt.NDArray[np.str_]) -> BoolArray:
    """Which labels mark a malicious flow (IoT-23 / Stratosphere: ``Malicious...``)."""
    return np.char.startswith(np.char.lower(labels.astype(np.str_)), "malicious")


def roc_auc(scores: FloatArray, positive: BoolArray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    Raises:
        ConfigError: ``detection_one_class`` if only one class is present.
    """
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ConfigError("ROC AUC needs positive and negative rows", code="detection_one_class")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(s.shape[0])
    start = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    end = np.r_[start[1:], s.shape[0]]
    avg = (start + end + 1) / 2.0
    ranks[order] = np.repeat(avg, end - start)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def tpr_at_fpr(scores: FloatArray, positive: BoolArray, fpr: float = 0.01) -> float:
    """Largest true-positive rate whose false-positive rate is at most ``fpr``."""
    neg = np.sort(scores[~positive])[::-1]
    pos = scores[positive]
    if neg.shape[0] == 0 or pos.shape[0] == 0:
        raise ConfigError("TPR at FPR needs positive and negative rows", code="detection_one_class")
    allowed = int(np.floor(fpr * neg.shape[0]))
    threshold = neg[allowed] if allowed < neg.shape[0] else -np.inf
    return float((pos > threshold).mean())


def rule_severity(rules: list[FlowRule], hits: dict[str, BoolArray], flows: int) -> IntArray:
    """Per flow (``flows`` of them), the highest :class:`~iotguard.detection.alert.Severity` of the rules that hold."""
    out: IntArray = np.zeros(flows, dtype=np.int64)
    for rule in rules:
        out = np.maximum(out, np.where(hits[rule.name], int(rule.severity), 0))
    return out


def detector_scores(ranking: FloatArray, normalised: FloatArray, rules: IntArray,
                    strong_score: float = 3.0) -> FloatArray:
    """iotguard's detector's grade of each flow: the severity of the hub's alert over it, then its learned score.

    The severity is the highest of the rules' (``rules``, from
    :func:`rule_severity`) and the learned score's as the hub grades an
    ``autoencoder`` alert: medium above the calibrated threshold
    (``normalised`` above 1), high at ``strong_score`` or above, none below
    (per flow: the hub's further condition of three such flows per host and
    batch is not applied). Within one severity, flows rank by ``ranking``
    (a non-negative learned score: the normalised one, or the surprise when
    rows of several logs are pooled), mapped to ``[0, 1)`` by
    ``s / (1 + s)`` and added to the severity, so the result is on one fixed
    scale; with no rule firing, it orders flows as the learned score does.
    """
    learned = np.where(normalised >= strong_score, int(Severity.HIGH),
                       np.where(normalised > 1.0, int(Severity.MEDIUM), 0))
    s = np.maximum(ranking, 0.0)
    out: FloatArray = np.maximum(learned, rules) + s / (1.0 + s)
    return out


def learn_rules(rules: list[FlowRule], flows: FlowBatch, features: FeatureMatrix, rows: npt.NDArray[np.intp],
                batch_size: int = 1024) -> None:
    """Teach the rules' baselines the training ``rows`` (indices into ``flows``, in time order), in batches."""
    for i in range(0, rows.shape[0], batch_size):
        part = rows[i:i + batch_size]
        for rule in rules:
            rule.learn(flows.take(part), features.take(part))


def flag_flows(rules: list[FlowRule], flows: FlowBatch, features: FeatureMatrix,
               batch_size: int = 1024) -> dict[str, BoolArray]:
    """Per rule, the flows (in time order, with their features) on which its condition holds, batch by batch.

    As in the hub, hosts without a judged baseline go on learning from each
    batch before the rules that keep one judge it (:func:`~iotguard.detection.pipeline.learn_unjudged`):
    ``rules`` change, so grade a fresh copy each time.
    """
    parts: dict[str, list[BoolArray]] = {rule.name: [np.zeros(0, dtype=bool)] for rule in rules}
    first = [rule for rule in rules if not rule.keeps_baseline]
    for i in range(0, len(flows), batch_size):
        batch, rows = flows.take(slice(i, i + batch_size)), features.take(slice(i, i + batch_size))
        hits = {rule.name: rule.hits(batch, rows) for rule in first}
        learn_unjudged(rules, batch, rows, hits)
        for rule in rules:
            parts[rule.name].append(hits[rule.name] if rule.name in hits else rule.hits(batch, rows))
    return {name: np.concatenate(p) for name, p in parts.items()}


@dataclass(frozen=True)
class EvaluationReport:
    """Result of :func:`evaluate_flows` (see the module docstring).

    ``auc`` ... ``delay_p90_s`` grade the detector (learned score and flow
    rules); ``auc_learned`` and ``tpr_at_1pct_fpr_learned`` the learned
    score alone; ``rule_flagged`` counts the later flows a rule flagged,
    ``rule_flagged_malicious`` those of them labeled malicious.
    """

    flows: int
    train_flows: int
    scored_flows: int
    scored_malicious: int
    auc: float
    tpr_at_1pct_fpr: float
    auc_learned: float
    tpr_at_1pct_fpr_learned: float
    rule_flagged: int
    rule_flagged_malicious: int
    precision: float
    recall: float
    fpr: float
    flows_per_s: float
    device_models: int
    attackers: int
    attackers_detected: int
    delay_median_s: float | None
    delay_p90_s: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _delays(batch: FlowBatch, malicious: BoolArray, alert: BoolArray) -> tuple[int, list[float]]:
    hosts = np.unique(batch.orig_h[malicious])
    delays: list[float] = []
    for host in hosts.tolist():
        rows = batch.orig_h == host
        first = float(batch.ts[rows & malicious].min())
        hits = rows & malicious & alert
        if hits.any():
            delays.append(float(batch.ts[hits].min()) - first)
    return int(hosts.shape[0]), delays


def evaluate_flows(batch: FlowBatch, labels: npt.NDArray[np.str_], *, train_share: float = 0.2,
                   batch_size: int = 1024, features: FeatureConfig | None = None,
                   scorer: ScorerConfig | None = None,
                   timer: Callable[[], float] = time.perf_counter,
                   detector: DetectorConfig | None = None, local_hosts: Collection[str] = (),
                   feed: ThreatFeed | None = None, countries: CountryDatabase | None = None) -> EvaluationReport:
    """Fit on early benign flows, score the rest, grade with the labels.

    Args:
        batch: All flows (any order; they are sorted by time).
        labels: Label of each flow.
        train_share: Share of the flows, by time order, the baselines may learn from.
        batch_size: Flows per feature-extraction batch (the stream's granularity).
        features: Feature settings.
        scorer: Baseline settings (target FPR, calibration).
        timer: Monotonic seconds, for throughput.
        detector: Rule settings (thresholds); its ``features`` and ``scorer``
            are replaced by the two arguments above.
        local_hosts: Addresses inside the monitored site (``ConnLog.local_hosts``: what Zeek's
            ``local_orig`` / ``local_resp`` say), for the rule on probing from outside; a log
            has no device inventory.
        feed: Known-bad addresses (the hub's threat feed): graded with the ``known_bad_address`` rule.
        countries: A country database: graded with the ``new_country`` rule.

    Raises:
        ConfigError: Too few benign training flows, or the scored flows hold one class only.
    """
    if not 0 < train_share < 1 or labels.shape[0] != len(batch):
        raise ConfigError("train_share outside (0, 1) or labels do not match flows", code="detection_config_invalid")
    order = batch.time_order()
    flows = batch.take(order)
    malicious = is_malicious(labels[order])
    n = len(flows)
    split = int(np.floor(n * train_share))
    config = replace(detector or DetectorConfig(), features=features or FeatureConfig(),
                     scorer=scorer or ScorerConfig())
    extractor = FeatureExtractor(config.features)
    started = timer()
    parts = [extractor.transform(flows.take(slice(i, i + batch_size))) for i in range(0, n, batch_size)]
    extract_s = timer() - started
    if not parts:
        raise ConfigError("no flows", code="detection_too_few_rows")
    matrix = FeatureMatrix.concatenate(parts)
    x = matrix.values
    train = np.flatnonzero(~malicious[:split])
    baseline = BaselineScorer(config.scorer)
    baseline.fit(x[train], flows.orig_h[train])
    rules = flow_rules(config, extractor.names, feed=feed, local_hosts=local_hosts, countries=countries)
    learn_rules(rules, flows, matrix, train, batch_size)
    later, later_features = flows.take(slice(split, n)), matrix.take(slice(split, n))
    started = timer()
    learned = np.concatenate([baseline.score(x[i:i + batch_size], flows.orig_h[i:i + batch_size])
                              for i in range(split, n, batch_size)])
    hits = flag_flows(rules, later, later_features, batch_size)
    score_s = timer() - started
    severity = rule_severity(rules, hits, n - split)
    flagged = severity > 0
    scores = detector_scores(learned, learned, severity, config.strong_score)
    truth = malicious[split:]
    alert = (learned > 1.0) | flagged
    tp = int((alert & truth).sum())
    fp = int((alert & ~truth).sum())
    attackers, delays = _delays(later, truth, alert)
    return EvaluationReport(
        flows=n, train_flows=int(train.shape[0]), scored_flows=n - split, scored_malicious=int(truth.sum()),
        auc=roc_auc(scores, truth), tpr_at_1pct_fpr=tpr_at_fpr(scores, truth, 0.01),
        auc_learned=roc_auc(learned, truth), tpr_at_1pct_fpr_learned=tpr_at_fpr(learned, truth, 0.01),
        rule_flagged=int(flagged.sum()), rule_flagged_malicious=int((flagged & truth).sum()),
        precision=tp / (tp + fp) if tp + fp else 0.0, recall=tp / max(int(truth.sum()), 1),
        fpr=fp / max(int((~truth).sum()), 1),
        flows_per_s=n / max(extract_s + score_s * n / max(n - split, 1), 1e-9),
        device_models=baseline.device_models, attackers=attackers, attackers_detected=len(delays),
        delay_median_s=float(np.median(delays)) if delays else None,
        delay_p90_s=float(np.quantile(delays, 0.9)) if delays else None,
    )
