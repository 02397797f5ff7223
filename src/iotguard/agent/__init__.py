"""iotguard.agent."""
