"""iotguard.policy."""
