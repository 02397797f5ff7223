"""The sealed payload: one reading as a small CBOR map.

``{"ts": <int, ms since epoch>, "f": {<field>: <number | text | bool>, ...}}``
plus optional ``"p"`` (purpose, text). The hub decodes it strictly: size
limit first, then exact types, bounded field count and lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cbor2

from iotguard.errors import MalformedError

__all__ = ["MAX_FIELD_NAME", "MAX_TEXT_VALUE", "Reading", "decode_reading", "encode_reading"]

MAX_FIELD_NAME = 32
MAX_TEXT_VALUE = 256
FieldValue = int | float | str | bool


@dataclass(frozen=True, slots=True)
class Reading:
    """A sensor reading after the device's privacy pipeline."""

    ts_ms: int
    fields: dict[str, FieldValue]
    purpose: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        d: dict[str, Any] = {"ts_ms": self.ts_ms, "fields": dict(self.fields)}
        if self.purpose is not None:
            d["purpose"] = self.purpose
        return d


def encode_reading(reading: Reading) -> bytes:
    """Deterministic CBOR encoding of a reading."""
    m: dict[str, Any] = {"ts": reading.ts_ms, "f": reading.fields}
    if reading.purpose is not None:
        m["p"] = reading.purpose
    return cbor2.dumps(m, canonical=True)


def _check_value(name: str, v: Any) -> FieldValue:
    if isinstance(v, bool | int):
        if isinstance(v, int) and not -(2**63) <= v < 2**63:
            raise MalformedError(f"field {name!r}: integer out of range")
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise MalformedError(f"field {name!r}: not a finite number")
        return v
    if isinstance(v, str):
        if len(v) > MAX_TEXT_VALUE:
            raise MalformedError(f"field {name!r}: text too long")
        return v
    raise MalformedError(f"field {name!r}: unsupported value type")


def decode_reading(data: bytes, *, max_size: int = 16384, max_fields: int = 64) -> Reading:
    """Strictly decode a reading.

    Raises:
        MalformedError: not a well-formed reading within the limits.
    """
    if len(data) > max_size:
        raise MalformedError("reading too large")
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, RecursionError, MemoryError) as exc:
        raise MalformedError(f"reading is not valid CBOR: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or not set(obj) <= {"ts", "f", "p"} or "ts" not in obj or "f" not in obj:
        raise MalformedError("reading must be a map with ts, f and optional p")
    ts, fields, purpose = obj["ts"], obj["f"], obj.get("p")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**53:
        raise MalformedError("reading ts must be a non-negative integer (ms)")
    if not isinstance(fields, dict) or len(fields) > max_fields:
        raise MalformedError("reading fields must be a map within the field limit")
    if purpose is not None and (not isinstance(purpose, str) or len(purpose) > MAX_FIELD_NAME):
        raise MalformedError("reading purpose must be short text")
    out: dict[str, FieldValue] = {}
    for k, v in fields.items():
        if not isinstance(k, str) or not 0 < len(k) <= MAX_FIELD_NAME:
            raise MalformedError("field names must be 1-32 characters of text")
        out[k] = _check_value(k, v)
    return Reading(ts, out, purpose)
