"""iotguard.privacy."""
