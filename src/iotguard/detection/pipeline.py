"""The flow detector: features, the learned baselines and the rules, over batches.

:meth:`FlowDetector.fit` learns from benign traffic (feature state, the
per-device and per-model baselines and their thresholds, the rules'
destination and port baselines); :meth:`FlowDetector.process` turns each
later batch into alerts. It holds no I/O: flows come in, alerts go out.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from iotguard.detection.alert import Alert, Severity
from iotguard.detection.features import FeatureConfig, FeatureExtractor, FeatureMatrix
from iotguard.detection.feed import ThreatFeed
from iotguard.detection.flows import FlowBatch
from iotguard.detection.geo import CountryDatabase, NewCountryRule
from iotguard.detection.inbound import InboundProbeRule
from iotguard.detection.model_ports import ModelPorts
from iotguard.detection.rules import (
    BeaconRule,
    FlowRule,
    KnownBadRule,
    NewPortRule,
    ScanFanOutRule,
    Throttle,
    port_keys,
)
from iotguard.detection.scorer import BaselineScorer, ScorerConfig
from iotguard.errors import ConfigError

__all__ = ["DetectorConfig", "FlowDetector", "LearningWindow", "flow_rules", "learn_unjudged"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of the whole flow detector.

    Attributes:
        features: Feature extraction.
        scorer: Learned baselines and calibration.
        min_anomalous_flows: Flows of one host above threshold in one batch
            that make an ``autoencoder`` alert ...
        strong_score: ... or one flow with a normalised score at least this.
            Severity follows the evidence (ADR 0710): a lone very unusual flow
            (fewer than ``min_anomalous_flows`` above threshold) is low, because
            rare benign traffic makes those too (a firmware check every few hours
            that the window saw a handful of times); ``min_anomalous_flows`` above
            threshold are medium, and high with one of them at ``strong_score``.
        scan_min_new: New destinations or ports within ~15 s that make a scan alert.
        beacon_max_cv: Largest inter-arrival variation of a beacon.
        realert_s: Quiet time per device and detector after an alert.
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    min_anomalous_flows: int = 3
    strong_score: float = 3.0
    scan_min_new: float = 20.0
    beacon_max_cv: float = 0.1
    realert_s: float = 300.0


@dataclass(frozen=True)
class LearningWindow:
    """What :meth:`FlowDetector.learn_watching` has gathered so far (this process's rows) and the fit state."""

    rows: tuple[FloatArray, ...]
    hosts: tuple[npt.NDArray[np.str_], ...]
    learned_rows: int
    excluded: frozenset[str]
    fitted: bool
    scorer: BaselineScorer
    span: tuple[float, float] | None = None
    stride: int = 1
    offered: int = 0
    ports: ModelPorts | None = None
    model_ports: Mapping[str, frozenset[int]] | None = None


def flow_rules(config: DetectorConfig, names: tuple[str, ...], devices: Mapping[str, str] | None = None,
               feed: ThreatFeed | None = None, local_hosts: Collection[str] = (), *,
               models: Mapping[str, str] | None = None,
               model_ports: Mapping[str, frozenset[int]] | None = None,
               countries: CountryDatabase | None = None) -> list[FlowRule]:
    """The flow rules a :class:`FlowDetector` runs, fresh (the evaluation harness grades the same set).

    Args:
        config: Settings (rule thresholds, quiet time).
        names: Feature column names of the extractor whose features the rules read.
        devices: Address -> device id of fleet devices.
        feed: Known-bad addresses (no feed: no ``known_bad_address`` rule).
        local_hosts: Addresses inside the site besides the devices (for ``inbound_probing``, and hosts
            that go on learning their baselines after the window; an evaluation passes the hosts the Zeek
            log marks local).
        models: Device id -> device model.
        model_ports: Per model, the ports several of its devices used in the learning window (ADR 0712).
        countries: A country database (none: no ``new_country`` rule, ADR 0717).
    """
    quiet = config.realert_s
    lives = config.features.half_lives_s  # the probing rule's short (nearest 60 s) and long counts
    compiled = config.features.compiled is not False  # the hub's ``detection_compiled`` (ADR 0705)
    rules: list[FlowRule] = [
        ScanFanOutRule(names, min_new=config.scan_min_new, devices=devices, realert_s=quiet),
        NewPortRule(devices=devices, realert_s=quiet, local_hosts=local_hosts, models=models, model_ports=model_ports,
                    compiled=compiled),
        BeaconRule(names, max_cv=config.beacon_max_cv, devices=devices, realert_s=quiet, alert_unlearned=False,
                   local_hosts=local_hosts, compiled=compiled),
        InboundProbeRule(names, half_lives_s=(min(lives, key=lambda h: abs(math.log(h / 60.0))), max(lives)),
                         channel_half_life_s=config.features.channel_half_life_s, devices=devices,
                         local_hosts=local_hosts, realert_s=quiet, compiled=compiled),
    ]
    if countries is not None:
        rules.append(NewCountryRule(countries, devices=devices, realert_s=quiet, local_hosts=local_hosts,
                                    compiled=compiled))
    if feed is not None:
        rules.append(KnownBadRule(feed, devices=devices, realert_s=quiet))
    return rules


def learn_unjudged(rules: list[FlowRule], batch: FlowBatch, features: FeatureMatrix,
                   hits: Mapping[str, BoolArray] | None = None) -> None:
    """After the learning window: the rules' baselines go on learning the devices and site hosts that have none
    judged yet.

    Such a host with fewer than ``min_flows`` learned flows (a device
    enrolled after the window, or one that reported too rarely in it) learns
    its first flows until it has ``min_flows``, then is judged like every
    other host (ADR 0709). The learning window's guard holds here too: a
    host without a judged baseline that scan fan-out or a known-bad address
    flags in this batch is barred, so none of its rows are learned from now
    on, and what it had learned is forgotten. Run it on every batch before
    the rules judge it, on the same rules: the hub's
    :meth:`FlowDetector.process` and the evaluation.

    Args:
        rules: From :func:`flow_rules`, already taught the learning window.
        batch: The next batch, in time order.
        features: Its features.
        hits: The rules' :meth:`~iotguard.detection.rules.FlowRule.hits` on this batch where already known.
    """
    flagged: set[str] = set()
    for rule in rules:
        if isinstance(rule, ScanFanOutRule | KnownBadRule):
            hit = hits[rule.name] if hits is not None and rule.name in hits else rule.hits(batch, features)
            if hit.any():  # the flagged address: the scanner, or the device talking to a listed address
                flagged.update(batch.orig_h[hit].tolist())
                if isinstance(rule, KnownBadRule):
                    flagged.update(batch.resp_h[hit].tolist())
    for rule in rules:
        if flagged:
            rule.bar(flagged)
        rule.learn_unjudged(batch, features)


class FlowDetector:
    """Learned baselines plus rules over a stream of flow batches.

    Args:
        config: Settings.
        devices: Address -> device id of fleet devices (others are named by address).
        models: Device id -> device model, for the per-model fallback baselines.
        feed: Known-bad addresses (no feed: no ``known_bad_address`` rule).
        countries: A country database (none: no ``new_country`` rule).
    """

    def __init__(self, config: DetectorConfig | None = None, *, devices: Mapping[str, str] | None = None,
                 models: Mapping[str, str] | None = None, feed: ThreatFeed | None = None,
                 countries: CountryDatabase | None = None) -> None:
        self.config = config or DetectorConfig()
        self.devices = dict(devices or {})
        self.models = dict(models or {})
        self.feed = feed
        self.countries = countries
        self.extractor = FeatureExtractor(self.config.features)
        self.scorer = BaselineScorer(self.config.scorer)
        #: Per device model, the ports several of its devices used in the learning window (ADR 0712).
        self.model_ports: dict[str, frozenset[int]] = {}
        self._ports = ModelPorts(self.models)
        self.rules = self._make_rules()
        #: When the learned baselines last alerted on each device.
        self.throttle = Throttle(self.config.realert_s)
        self._fitted = False
        self._rows: list[FloatArray] = []
        self._hosts: list[npt.NDArray[np.str_]] = []
        #: Addresses a rule flagged while learning: never learned as normal (see :meth:`learn_watching`).
        self.excluded: set[str] = set()
        #: Rows taken by :meth:`learn` so far.
        self.learned_rows = 0
        #: First and last flow time of the learning window so far.
        self.span: tuple[float, float] | None = None
        # Kept window rows are every ``_stride``-th row offered (:meth:`thin_window`); ``_offered`` counts them.
        self._stride, self._offered = 1, 0

    def _make_rules(self) -> list[FlowRule]:
        return flow_rules(self.config, self.extractor.names, self.devices, self.feed, models=self.models,
                          model_ports=self.model_ports, countries=self.countries)

    def set_feed(self, feed: ThreatFeed | None) -> None:
        """Match against ``feed`` from the next batch on (``None``: no ``known_bad_address`` rule); the rule's
        throttle is kept."""
        self.feed = feed
        rule = next((r for r in self.rules if isinstance(r, KnownBadRule)), None)
        if feed is None:
            self.rules = [r for r in self.rules if r is not rule]
        elif rule is None:
            self.rules.append(KnownBadRule(feed, devices=self.devices, realert_s=self.config.realert_s))
        else:
            rule.feed = feed

    def _set_model_ports(self, ports: Mapping[str, frozenset[int]]) -> None:
        self.model_ports = dict(ports)
        for rule in self.rules:
            if isinstance(rule, NewPortRule):
                rule.model_ports = dict(ports)

    def _learn_ports(self, batch: FlowBatch) -> None:
        if self.models:
            self._ports.learn([self.devices.get(h) for h in batch.orig_h.tolist()], port_keys(batch))

    def reset_hosts(self) -> None:
        """Forget every host's state: features, rule baselines, throttles, exclusions.

        The learned baselines and the rows of the learning window stay. The
        hub calls this before it puts back the stored state of a batch's hosts
        (:class:`~iotguard.detection.flow_state.HostStates`, ADR 0752).
        """
        self.extractor = FeatureExtractor(self.config.features)
        self.rules = self._make_rules()
        self.throttle = Throttle(self.config.realert_s)

    def window(self) -> LearningWindow:
        """The learning window's state, for :meth:`restore_window`."""
        return LearningWindow(tuple(self._rows), tuple(self._hosts), self.learned_rows, frozenset(self.excluded),
                              self._fitted, self.scorer, self.span, self._stride, self._offered,
                              None if self._fitted else self._ports.copy(), self.model_ports)

    def restore_window(self, saved: LearningWindow) -> None:
        """Put back what :meth:`window` returned: a batch whose result was not stored is undone (a fit too)."""
        self._rows, self._hosts = list(saved.rows), list(saved.hosts)
        self.learned_rows, self.excluded = saved.learned_rows, set(saved.excluded)
        self.span, self._stride, self._offered = saved.span, saved.stride, saved.offered
        self._fitted = saved.fitted
        self.scorer = saved.scorer if saved.fitted else BaselineScorer(self.config.scorer)
        if saved.ports is not None:
            self._ports = saved.ports.copy()
        self._set_model_ports(saved.model_ports or {})

    def adopt(self, scorer: BaselineScorer, model_ports: Mapping[str, frozenset[int]] | None = None) -> None:
        """Score with ``scorer`` and judge new ports with ``model_ports`` (learned elsewhere, e.g. by another
        hub process) from now on.

        The learning window's rows are dropped.
        """
        self.scorer = scorer
        self._set_model_ports(model_ports or {})
        self._rows, self._hosts = [], []
        self._fitted = True

    def _device(self, hosts: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.str_]]:
        if not self.devices:
            return hosts, np.full(hosts.shape[0], "*")
        device = np.array([self.devices.get(h, h) for h in hosts.tolist()], dtype=np.str_)
        model = np.array([self.models.get(d, "*") for d in device.tolist()], dtype=np.str_)
        return device, model

    def fit(self, batches: Iterable[FlowBatch]) -> None:
        """Learn from benign batches, in time order.

        Raises:
            ConfigError: ``detection_too_few_rows`` if there is too little traffic.
        """
        for batch in batches:
            self.learn(batch)
        self.finish_learning()

    @property
    def fitted(self) -> bool:
        """Whether the learned baselines score (after :meth:`fit` or :meth:`finish_learning`)."""
        return self._fitted

    def learn(self, batch: FlowBatch) -> FeatureMatrix:
        """Take one benign batch (in time order) into the baselines being learned; returns its features.

        The rows are kept until :meth:`finish_learning`; the rules' baselines
        (destinations, ports) learn at once.
        """
        features = self.extractor.transform(batch)
        for rule in self.rules:
            rule.learn(batch, features)
        self._learn_ports(batch)
        self._rows.append(features.values)
        self._hosts.append(batch.orig_h)
        self.learned_rows += len(batch)
        return features

    def learn_watching(self, batch: FlowBatch) -> list[Alert]:
        """Learn from a batch of live traffic (in time order) while watching it; returns the rules' alerts.

        Live traffic is not known to be benign, so the learning window guards
        itself: the rules that need no baseline (scan fan-out, known-bad
        addresses) run on every batch, and an address they flag is *excluded*:
        none of its flows in this batch or later ones are learned, rows it
        contributed earlier in the window are dropped at
        :meth:`finish_learning`, and the rules' destination and port baselines
        forget it at once and never learn it (after the window either,
        :func:`learn_unjudged`). Its flows still update the feature state (other hosts'
        fan-out and inbound statistics include them). Probing from outside
        (``inbound_probing``) alerts too, but names the probed device, which
        is not excluded for being probed.
        """
        features = self.extractor.transform(batch)
        alerts = self.learning_alerts(batch, features)
        flagged = {str(dict(a.evidence).get("address", a.device)) for a in alerts
                   if a.detector != InboundProbeRule.name} - self.excluded
        if flagged:
            for rule in self.rules:  # at once, so the host's stored rule baselines are empty from now on (ADR 0752)
                rule.forget(flagged)
            self._ports.forget(self.devices.get(h, h) for h in flagged)
            self.excluded |= flagged
        keep = ~np.isin(batch.orig_h, sorted(self.excluded)) if self.excluded else np.ones(len(batch), dtype=bool)
        if keep.any():
            kept = features.take(keep)
            part = batch.take(np.flatnonzero(keep))
            for rule in self.rules:
                rule.learn(part, kept)
            self._learn_ports(part)
            sample = (self._offered + np.arange(len(part))) % self._stride == 0
            self._offered += len(part)
            self._rows.append(kept.values[sample])
            self._hosts.append(part.orig_h[sample])
        self.learned_rows += len(batch)
        first, last = float(batch.ts[0]), float(batch.ts[-1])
        self.span = (first, last) if self.span is None else (min(self.span[0], first), max(self.span[1], last))
        return alerts

    @property
    def window_rows(self) -> int:
        """Rows the learning window holds for the learned baselines."""
        return sum(h.shape[0] for h in self._hosts)

    def thin_window(self, max_rows: int) -> None:
        """Keep the learning window's rows under ``max_rows``: above it, every other row is dropped, and from
        then on every other row offered is kept (so the window stays an even sample of its whole time)."""
        while self.window_rows > max_rows:
            x, hosts = np.concatenate(self._rows), np.concatenate(self._hosts)
            self._rows, self._hosts = [x[::2]], [hosts[::2]]
            self._stride *= 2

    def ready_to_finish(self, learn_flows: int, learn_s: float = 0.0) -> bool:
        """Whether ``learn_flows`` flows over at least ``learn_s`` seconds of flow time were seen, and enough rows
        outside flagged addresses were kept to fit."""
        if self.learned_rows < learn_flows or self.span is None or self.span[1] - self.span[0] < learn_s:
            return False
        excluded = sorted(self.excluded)
        clean = sum(int((~np.isin(h, excluded)).sum()) if excluded else h.shape[0] for h in self._hosts)
        return clean >= self.config.scorer.min_model_rows

    def finish_learning(self) -> None:
        """Fit the learned baselines on the rows taken by :meth:`learn` (then released).

        Rows of addresses in :attr:`excluded` are dropped first. Then the
        baselines are fitted, the training rows scored, and the rows at or
        above ``strong_score`` (far above their own calibrated threshold:
        an outburst inside the window) dropped and the baselines fitted once
        more without them, if enough rows remain.

        Raises:
            ConfigError: ``detection_too_few_rows`` if there is too little traffic.
        """
        if not self._rows:
            raise ConfigError("no training traffic", code="detection_too_few_rows")
        x, hosts = np.concatenate(self._rows), np.concatenate(self._hosts)
        self._rows, self._hosts = [], []
        if self.excluded:
            keep = ~np.isin(hosts, sorted(self.excluded))
            x, hosts = x[keep], hosts[keep]
            for rule in self.rules:
                rule.forget(self.excluded)
        if x.shape[0] < self.config.scorer.min_model_rows:
            raise ConfigError(f"{x.shape[0]} training rows outside flagged addresses", code="detection_too_few_rows")
        device, model = self._device(hosts)
        self.scorer.fit(x, device, model)
        calm = self.scorer.score(x, device, model) < self.config.strong_score
        if not calm.all() and calm.sum() >= self.config.scorer.min_model_rows:
            self.scorer.fit(x[calm], device[calm], model[calm])
        self._set_model_ports(self._ports.freeze())
        self._ports = ModelPorts(self.models)
        self._fitted = True

    def learning_alerts(self, batch: FlowBatch, features: FeatureMatrix) -> list[Alert]:
        """Alerts of the rules that need no baseline (scan fan-out, known-bad addresses, probing from outside)
        while learning."""
        alerts: list[Alert] = []
        for rule in self.rules:
            if isinstance(rule, ScanFanOutRule | KnownBadRule | InboundProbeRule):
                alerts.extend(rule.evaluate(batch, features))
        return alerts

    def score(self, batch: FlowBatch) -> tuple[FeatureMatrix, FloatArray]:
        """Features and normalised scores of a batch (updates the feature state).

        Raises:
            ConfigError: ``detection_not_fitted`` before :meth:`fit`.
        """
        if not self._fitted:
            raise ConfigError("flow detector used before fit", code="detection_not_fitted")
        features = self.extractor.transform(batch)
        device, model = self._device(batch.orig_h)
        return features, self.scorer.score(features.values, device, model)

    def process(self, batch: FlowBatch) -> list[Alert]:
        """Alerts for the next batch (flows in time order).

        Hosts without a judged rule baseline learn from it first (:func:`learn_unjudged`).
        """
        features, scores = self.score(batch)
        alerts = self._anomaly_alerts(batch, scores, features.values)
        learn_unjudged(self.rules, batch, features)
        for rule in self.rules:
            alerts.extend(rule.evaluate(batch, features))
        return alerts

    def _anomaly_alerts(self, batch: FlowBatch, scores: FloatArray, values: FloatArray) -> list[Alert]:
        above = scores > 1.0
        out: list[Alert] = []
        if not above.any():
            return out
        for host in np.unique(batch.orig_h[above]).tolist():
            rows = above & (batch.orig_h == host)
            top, count = float(scores[rows].max()), int(rows.sum())
            several, strong = count >= self.config.min_anomalous_flows, top >= self.config.strong_score
            if not several and not strong:
                continue
            device = self.devices.get(host, host)
            ts = batch.ts[rows]
            if not self.throttle.allow(device, "autoencoder", float(ts.max())):
                continue
            # Severity follows the evidence (ADR 0710): a lone very unusual flow is low.
            severity = Severity.LOW if not several else Severity.HIGH if strong else Severity.MEDIUM
            model = self.models.get(device, "*")
            worst = int(np.flatnonzero(rows)[np.argmax(scores[rows])])
            columns = self.scorer.explain(values[worst], device, model)
            out.append(Alert.create(device, "autoencoder", top, severity, (float(ts.min()), float(ts.max())), {
                "address": host, "flows_above": count,
                "flows": int((batch.orig_h == host).sum()),
                "destinations": int(np.unique(batch.resp_h[rows]).shape[0]),
                "model": model,
                "features": ",".join(self.extractor.names[c] for c in sorted(columns))[:120]}))
        return out
