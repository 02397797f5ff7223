"""Zero-trust policy decision point on Cedar.

Every publish, subscribe and operator action is decided by one
:class:`PolicyEngine` from the Cedar policies (validated against the
iotguard schema), the device's posture (trust tier, risk, certificate,
attestation freshness, location, segment, quarantine) and the time.
Decisions are cached per request and invalidated the moment posture or
policy changes; an engine without a valid policy set denies everything.
"""

from iotguard.policy.acl import AclGrant, IncrementalAcl, derive_device_acl, render_mosquitto_acl
from iotguard.policy.admin import (
    InMemoryPolicyRepository,
    LoggingAuditSink,
    PolicyActivation,
    PolicyAdministration,
    PolicyAuditSink,
    PolicyRepository,
    PolicyVersion,
    RecordingAuditSink,
)
from iotguard.policy.cases import (
    CaseResult,
    load_case_file,
    posture_from_spec,
    run_case_file,
    shipped_case_files,
)
from iotguard.policy.enforcement import IngestVerdict, authorize_ingest, authorize_operator, operator_request
from iotguard.policy.engine import ChangeListener, EngineLimits, PolicyEngine
from iotguard.policy.model import (
    DEVICE_ACTIONS,
    OPERATOR_ACTIONS,
    QUARANTINE_SEGMENT,
    TRUST_TIERS,
    AccessRequest,
    Decision,
    DecisionCode,
    Explanation,
)
from iotguard.policy.policyset import (
    PolicyDiff,
    PolicySchema,
    PolicySet,
    PolicyValidationError,
    default_policy_set,
    default_roles,
    default_schema,
    diff_policy_sets,
    validate,
)
from iotguard.policy.posture import Posture, PostureListener, PostureStore, SegmentSpec
from iotguard.policy.sessions import RevokedSession, SessionRegistry
from iotguard.policy.topics import MAX_TOPIC_LENGTH, TopicInfo, TopicLayout, check_identifier

__all__ = [
    "DEVICE_ACTIONS",
    "MAX_TOPIC_LENGTH",
    "OPERATOR_ACTIONS",
    "QUARANTINE_SEGMENT",
    "TRUST_TIERS",
    "AccessRequest",
    "AclGrant",
    "CaseResult",
    "ChangeListener",
    "Decision",
    "DecisionCode",
    "EngineLimits",
    "Explanation",
    "InMemoryPolicyRepository",
    "IncrementalAcl",
    "IngestVerdict",
    "LoggingAuditSink",
    "PolicyActivation",
    "PolicyAdministration",
    "PolicyAuditSink",
    "PolicyDiff",
    "PolicyEngine",
    "PolicyRepository",
    "PolicySchema",
    "PolicySet",
    "PolicyValidationError",
    "PolicyVersion",
    "Posture",
    "PostureListener",
    "PostureStore",
    "RecordingAuditSink",
    "RevokedSession",
    "SegmentSpec",
    "SessionRegistry",
    "TopicInfo",
    "TopicLayout",
    "authorize_ingest",
    "authorize_operator",
    "check_identifier",
    "default_policy_set",
    "default_roles",
    "default_schema",
    "derive_device_acl",
    "diff_policy_sets",
    "load_case_file",
    "operator_request",
    "posture_from_spec",
    "render_mosquitto_acl",
    "run_case_file",
    "shipped_case_files",
    "validate",
]
