"""Detection: flow inputs, features, learned baselines, rules, alerts and playbooks.

A domain package: no sockets, files or global state. Flows come in as bytes
(Zeek ``conn.log``, pcap) or records; alerts and planned response actions
come out as data for the hub to store, audit and execute.
"""

from iotguard.detection.alert import Alert, Severity
from iotguard.detection.autoencoder import AutoencoderConfig, AutoencoderEnsemble
from iotguard.detection.behaviour import (
    AppraisalRule,
    AuthFailure,
    CloneRule,
    CredentialGuessingRule,
    Refusal,
    RefusalRule,
    SessionSeen,
)
from iotguard.detection.evaluate import (
    EvaluationReport,
    detector_scores,
    evaluate_flows,
    flag_flows,
    is_malicious,
    learn_rules,
    roc_auc,
    rule_severity,
    tpr_at_fpr,
)
from iotguard.detection.features import FeatureConfig, FeatureExtractor, FeatureMatrix, feature_names
from iotguard.detection.feed import ThreatFeed, parse_feed
from iotguard.detection.flow_report import FlowReportLimits, decode_flow_report, encode_flow_report, split_for_reports
from iotguard.detection.flow_state import HostStates
from iotguard.detection.flows import CONN_STATES, PROTOCOLS, Flow, FlowBatch
from iotguard.detection.geo import CountryDatabase, NewCountryRule
from iotguard.detection.health import (
    HealthConfig,
    HealthDetector,
    HealthReport,
    decode_health_report,
    encode_health_report,
)
from iotguard.detection.inbound import InboundProbeRule
from iotguard.detection.model_state import export_scorer, import_scorer
from iotguard.detection.monitor import FlowMonitor, MonitorConfig, parse_address_inventory
from iotguard.detection.pcap import PcapLimits, PcapResult, flows_from_pcap
from iotguard.detection.pipeline import DetectorConfig, FlowDetector, LearningWindow, flow_rules
from iotguard.detection.playbook import (
    ActionKind,
    GuardRails,
    Playbook,
    PlaybookRule,
    default_playbook,
    parse_playbook,
)
from iotguard.detection.response import Action, ActionStatus, DeviceView, FleetView, ResponseState, approve, plan
from iotguard.detection.rules import BeaconRule, KnownBadRule, NewPortRule, ScanFanOutRule
from iotguard.detection.scorer import BaselineScorer, ScorerConfig
from iotguard.detection.zeek import ConnLog, ZeekLimits, parse_conn_log

__all__ = [
    "CONN_STATES",
    "PROTOCOLS",
    "Action",
    "ActionKind",
    "ActionStatus",
    "Alert",
    "AppraisalRule",
    "AuthFailure",
    "AutoencoderConfig",
    "AutoencoderEnsemble",
    "BaselineScorer",
    "BeaconRule",
    "CloneRule",
    "ConnLog",
    "CountryDatabase",
    "CredentialGuessingRule",
    "DetectorConfig",
    "DeviceView",
    "EvaluationReport",
    "FeatureConfig",
    "FeatureExtractor",
    "FeatureMatrix",
    "FleetView",
    "Flow",
    "FlowBatch",
    "FlowDetector",
    "FlowMonitor",
    "FlowReportLimits",
    "GuardRails",
    "HealthConfig",
    "HealthDetector",
    "HealthReport",
    "HostStates",
    "InboundProbeRule",
    "KnownBadRule",
    "LearningWindow",
    "MonitorConfig",
    "NewCountryRule",
    "NewPortRule",
    "PcapLimits",
    "PcapResult",
    "Playbook",
    "PlaybookRule",
    "Refusal",
    "RefusalRule",
    "ResponseState",
    "ScanFanOutRule",
    "ScorerConfig",
    "SessionSeen",
    "Severity",
    "ThreatFeed",
    "ZeekLimits",
    "approve",
    "decode_flow_report",
    "decode_health_report",
    "default_playbook",
    "detector_scores",
    "encode_flow_report",
    "encode_health_report",
    "evaluate_flows",
    "export_scorer",
    "feature_names",
    "flag_flows",
    "flow_rules",
    "flows_from_pcap",
    "import_scorer",
    "is_malicious",
    "learn_rules",
    "parse_address_inventory",
    "parse_conn_log",
    "parse_feed",
    "parse_playbook",
    "plan",
    "roc_auc",
    "rule_severity",
    "split_for_reports",
    "tpr_at_fpr",
]
