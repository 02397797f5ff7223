"""The hub's services, one per capability; each owns its tables through its store.

Built together by :func:`iotguard.hub.compose.build_hub_services`.
"""

from iotguard.hub.services.audit import AUDIT_ORIGIN, AuditDelivery, AuditService, OutboxAuditSink, audit_message
from iotguard.hub.services.broker_access import BrokerAccess, broker_access_message
from iotguard.hub.services.consent import CommandChannel, ConsentPush, ConsentService, consent_push_message
from iotguard.hub.services.lifecycle import DeviceLifecycle, open_hub_keys
from iotguard.hub.services.operators import OperatorService
from iotguard.hub.services.posture import PostureService
from iotguard.hub.services.telemetry import TelemetryService

__all__ = [
    "AUDIT_ORIGIN",
    "AuditDelivery",
    "AuditService",
    "BrokerAccess",
    "CommandChannel",
    "ConsentPush",
    "ConsentService",
    "DeviceLifecycle",
    "OperatorService",
    "OutboxAuditSink",
    "PostureService",
    "TelemetryService",
    "audit_message",
    "broker_access_message",
    "consent_push_message",
    "open_hub_keys",
]
