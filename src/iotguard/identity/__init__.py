"""iotguard.identity."""
