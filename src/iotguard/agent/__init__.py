"""Device runtime: enrollment, sealing, publishing, durable outbox."""

from iotguard.agent.outbox import Outbox
from iotguard.agent.runtime import Agent

__all__ = ["Agent", "Outbox"]
