"""iotguard.hub."""
