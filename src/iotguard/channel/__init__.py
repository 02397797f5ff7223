"""iotguard.channel."""
