"""Deterministic generalisation transforms: coarser values, not noisier ones.

Each function maps one value to a less precise one. They are post-processing
steps that carry no privacy-loss parameter; their protection is that of
the coarser value (k-anonymity-style), not a differential-privacy guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from iotguard.errors import MalformedError

__all__ = [
    "bin_value",
    "bucket_time",
    "geohash",
    "parse_location",
    "round_location",
    "round_value",
    "top_bottom_code",
]

_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"


def round_value(x: float, decimals: int) -> float:
    """Round to ``decimals`` decimal places (the declared precision)."""
    return round(float(x), decimals)


def bin_value(x: float, width: float, origin: float = 0.0) -> float:
    """Replace ``x`` by the midpoint of its bin ``[origin + i w, origin + (i+1) w)``."""
    i = math.floor((float(x) - origin) / width)
    return origin + (i + 0.5) * width


def top_bottom_code(x: float, low: float, high: float) -> float:
    """Top- and bottom-code: values outside ``[low, high]`` become the bound.

    Rare extreme values identify people; coding them to the bound hides them.
    """
    return min(high, max(low, float(x)))


def bucket_time(ts: float, seconds: int) -> int:
    """Start of the ``seconds``-wide bucket holding ``ts`` (seconds since the epoch)."""
    return int(math.floor(ts / seconds) * seconds)


def parse_location(value: Any) -> tuple[float, float]:
    """Read a location as ``(lat, lon)`` from a pair, a mapping or ``"lat,lon"`` text.

    Raises:
        MalformedError: not a location, or outside [-90, 90] x [-180, 180].
    """
    lat: Any
    lon: Any
    if isinstance(value, str):
        parts = value.split(",")
        if len(parts) != 2:
            raise MalformedError("location text must be 'lat,lon'")
        try:
            lat, lon = float(parts[0]), float(parts[1])
        except ValueError:
            raise MalformedError("location text must be 'lat,lon'") from None
    elif isinstance(value, Mapping):
        lat, lon = value.get("lat"), value.get("lon")
    elif isinstance(value, Sequence) and len(value) == 2:
        lat, lon = value[0], value[1]
    else:
        raise MalformedError("location must be (lat, lon), {'lat', 'lon'} or 'lat,lon'")
    if not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (lat, lon)
    ):
        raise MalformedError("location coordinates must be finite numbers")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise MalformedError("location out of range")
    return float(lat), float(lon)


def round_location(lat: float, lon: float, decimals: int) -> str:
    """Truncate a location to ``decimals`` decimal places, as ``"lat,lon"`` text.

    Truncation (towards the cell's south-west corner) rather than rounding
    keeps each output a fixed grid cell: 2 decimals ~ 1.1 km, 3 ~ 110 m.
    """
    f = 10**decimals
    la = math.floor(lat * f) / f
    lo = math.floor(lon * f) / f
    return f"{la:.{decimals}f},{lo:.{decimals}f}"


def geohash(lat: float, lon: float, precision: int) -> str:
    """Geohash of ``precision`` characters (5 ~ 4.9 km cell, 6 ~ 1.2 km, 7 ~ 150 m)."""
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    out: list[str] = []
    bit, ch, even = 0, 0, True
    while len(out) < precision:
        if even:
            mid = (lon_lo + lon_hi) / 2
            if lon >= mid:
                ch, lon_lo = ch * 2 + 1, mid
            else:
                ch, lon_hi = ch * 2, mid
        else:
            mid = (lat_lo + lat_hi) / 2
            if lat >= mid:
                ch, lat_lo = ch * 2 + 1, mid
            else:
                ch, lat_hi = ch * 2, mid
        even = not even
        bit += 1
        if bit == 5:
            out.append(_BASE32[ch])
            bit, ch = 0, 0
    return "".join(out)
