"""Prometheus collectors for the hub's subsystems: attestation, policy, device plane, updates,
audit and privacy.

Counters are per process (counts the services keep in memory since the
process started); gauges are fleet-wide (cheap store queries at scrape time).
Label values come from bounded sets only: statuses, reason codes, action
names, tiers and states, never a device or subject id.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from iotguard.audit.note import Checkpoint, parse_note
from iotguard.hub.policy_store import trust_tier_counts
from iotguard.hub.stores.learning import run_status_counts
from iotguard.rollout.campaign import RolloutState

if TYPE_CHECKING:
    from iotguard.hub.compose import HubServices

__all__ = ["register_subsystem_metrics"]


class _SubsystemCollector:
    def __init__(self, services: HubServices) -> None:
        self.services = services

    def collect(self) -> Any:
        s = self.services
        appraisals = CounterMetricFamily("iotguard_attestation_appraisals",
                                         "Attestation appraisals by this process", labels=["status", "reason"])
        for (status, reason), n in sorted(s.attestation.appraisals.snapshot().items()):
            appraisals.add_metric([status, reason], n)
        yield appraisals
        tiers = GaugeMetricFamily("iotguard_devices_by_trust_tier", "Active devices by trust tier (fleet)",
                                  labels=["tier"])
        for tier, n in sorted(trust_tier_counts(s.store.engine).items()):
            tiers.add_metric([tier], n)
        yield tiers
        decisions = CounterMetricFamily("iotguard_policy_decisions", "Cedar decisions by this process",
                                        labels=["principal", "action", "decision"])
        for (principal, action, decision), n in sorted(s.posture.engine.decisions.snapshot().items()):
            decisions.add_metric([principal, action, decision], n)
        yield decisions
        refused = CounterMetricFamily("iotguard_device_requests_refused",
                                      "Device requests refused by this process", labels=["action", "reason"])
        for (action, reason), n in sorted(s.plane.refusals.snapshot().items()):
            refused.add_metric([action, reason], n)
        yield refused
        reads = CounterMetricFamily("iotguard_repository_reads",
                                    "Firmware repository reads by this process", labels=["outcome", "reason"])
        if s.repository_reads is not None:
            for (outcome, reason), n in sorted(s.repository_reads.outcomes.snapshot().items()):
                reads.add_metric([outcome, reason], n)
        yield reads
        states = Counter(str(c.state) for c in s.rollouts.campaigns())
        campaigns = GaugeMetricFamily("iotguard_rollout_campaigns", "Rollout campaigns by state (fleet)",
                                      labels=["state"])
        for state in RolloutState:
            campaigns.add_metric([str(state)], states.get(str(state), 0))
        yield campaigns
        size = GaugeMetricFamily("iotguard_audit_log_size", "Entries in the audit log (fleet)")
        size.add_metric([], s.audit.log.size())
        yield size
        final = s.audit.log.latest_final_checkpoint()
        final_size = GaugeMetricFamily("iotguard_audit_final_checkpoint_size",
                                       "Tree size of the latest witnessed (final) checkpoint, 0 if none (fleet)")
        final_size.add_metric([], 0 if final is None else Checkpoint.from_body(parse_note(final).text).size)
        yield final_size
        yield from self._privacy()

    def _privacy(self) -> Any:
        s = self.services
        events = CounterMetricFamily("iotguard_privacy_events",
                                     "Consent changes and erasures by this process", labels=["event"])
        for (event,), n in sorted(s.consent.events.snapshot().items()):
            events.add_metric([event], n)
        yield events
        queries = CounterMetricFamily("iotguard_dp_queries", "Differentially private queries by this process",
                                      labels=["outcome"])
        if s.analytics is not None:
            for (outcome,), n in sorted(s.analytics.queries.snapshot().items()):
                queries.add_metric([outcome], n)
        yield queries
        rounds = GaugeMetricFamily("iotguard_aggregation_rounds",
                                   "Aggregation rounds in the shared round store, by phase", labels=["phase"])
        if s.aggregation is not None:
            for phase, n in sorted(s.aggregation.phases().items()):
                rounds.add_metric([phase], n)
        yield rounds
        runs = GaugeMetricFamily("iotguard_learning_runs", "Federated learning runs by status (fleet)",
                                 labels=["status"])
        for status, n in sorted(run_status_counts(s.store.engine).items()):
            runs.add_metric([status], n)
        yield runs


def register_subsystem_metrics(registry: CollectorRegistry, services: HubServices) -> None:
    """Register the subsystem families on the hub's ``/metrics`` registry."""
    registry.register(_SubsystemCollector(services))
