"""iotguard.audit."""
