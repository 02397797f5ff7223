"""iotguard.cli."""
