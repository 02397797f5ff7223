"""Admission control under load: per-device and per-segment quotas (no I/O)."""

from iotguard.admission.quota import (
    DEVICE_OVER_QUOTA,
    SEGMENT_OVER_QUOTA,
    Admission,
    QuotaLimits,
    QuotaTable,
    TokenBucket,
)

__all__ = ["DEVICE_OVER_QUOTA", "SEGMENT_OVER_QUOTA", "Admission", "QuotaLimits", "QuotaTable", "TokenBucket"]
