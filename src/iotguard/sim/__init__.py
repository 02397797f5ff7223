"""iotguard.sim."""
