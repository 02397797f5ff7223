"""Evaluation on labeled flow logs: the protocol of Kitsune and N-BaIoT.

Flows are put in time order and run through the feature extractor as a
stream. The learned baselines are fitted on the flows *not* labeled
malicious within the earliest ``train_share`` of the flows, and every later
flow is scored. Labels choose the training rows and grade the result,
nothing else. Reported: ROC AUC, TPR at 1 % FPR, precision / recall / FPR
at the calibrated threshold (normalised score above 1), flows per second
through feature extraction and scoring, and detection delay per attacking
host (first malicious flow to first alert on that host).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from iotguard.detection.features import FeatureConfig, FeatureExtractor
from iotguard.detection.flows import FlowBatch
from iotguard.detection.scorer import BaselineScorer, ScorerConfig
from iotguard.errors import ConfigError

__all__ = ["EvaluationReport", "evaluate_flows", "is_malicious", "roc_auc", "tpr_at_fpr"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


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


@dataclass(frozen=True)
class EvaluationReport:
    """Result of :func:`evaluate_flows` (see the module docstring)."""

    flows: int
    train_flows: int
    scored_flows: int
    scored_malicious: int
    auc: float
    tpr_at_1pct_fpr: float
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
                   timer: Callable[[], float] = time.perf_counter) -> EvaluationReport:
    """Fit on early benign flows, score the rest, grade with the labels.

    Args:
        batch: All flows (any order; they are sorted by time).
        labels: Label of each flow.
        train_share: Share of the flows, by time order, the baselines may learn from.
        batch_size: Flows per feature-extraction batch (the stream's granularity).
        features: Feature settings.
        scorer: Baseline settings (target FPR, calibration).
        timer: Monotonic seconds, for throughput.

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
    extractor = FeatureExtractor(features)
    started = timer()
    parts = [extractor.transform(flows.take(slice(i, i + batch_size))).values for i in range(0, n, batch_size)]
    extract_s = timer() - started
    x = np.concatenate(parts) if parts else np.zeros((0, len(extractor.names)))
    train = np.flatnonzero(~malicious[:split])
    baseline = BaselineScorer(scorer)
    baseline.fit(x[train], flows.orig_h[train])
    started = timer()
    scores = np.concatenate([baseline.score(x[i:i + batch_size], flows.orig_h[i:i + batch_size])
                             for i in range(split, n, batch_size)])
    score_s = timer() - started
    truth = malicious[split:]
    alert = scores > 1.0
    tp = int((alert & truth).sum())
    fp = int((alert & ~truth).sum())
    later = flows.take(slice(split, n))
    attackers, delays = _delays(later, truth, alert)
    return EvaluationReport(
        flows=n, train_flows=int(train.shape[0]), scored_flows=n - split, scored_malicious=int(truth.sum()),
        auc=roc_auc(scores, truth), tpr_at_1pct_fpr=tpr_at_fpr(scores, truth, 0.01),
        precision=tp / (tp + fp) if tp + fp else 0.0, recall=tp / max(int(truth.sum()), 1),
        fpr=fp / max(int((~truth).sum()), 1),
        flows_per_s=n / max(extract_s + score_s * n / max(n - split, 1), 1e-9),
        device_models=baseline.device_models, attackers=attackers, attackers_detected=len(delays),
        delay_median_s=float(np.median(delays)) if delays else None,
        delay_p90_s=float(np.quantile(delays, 0.9)) if delays else None,
    )
