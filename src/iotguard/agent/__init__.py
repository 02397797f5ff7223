"""Device runtime: enrollment, sealing, publishing, durable outbox, measured boot and evidence."""

from iotguard.agent.boot import BOOT_CHAIN, BootRecord, BootStage, MeasuredBoot, provision_boot_anchor
from iotguard.agent.evidence import produce_evidence
from iotguard.agent.images import build_image_set
from iotguard.agent.outbox import Outbox
from iotguard.agent.runtime import Agent

__all__ = [
    "BOOT_CHAIN",
    "Agent",
    "BootRecord",
    "BootStage",
    "MeasuredBoot",
    "Outbox",
    "build_image_set",
    "produce_evidence",
    "provision_boot_anchor",
]
