"""iotguard.wire."""
