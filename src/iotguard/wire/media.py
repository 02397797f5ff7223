"""The sealed media object: anonymised (or consented raw) media a device sends.

Plaintext of an envelope on a device's ``media`` topic (sealed exactly like
a reading, with the topic in the associated data). Canonical CBOR map::

    {"ts": ms since the epoch, "p": purpose, "s": stream, "r": release,
     "m": method or null, "c": codec, "d": encoded media bytes}

Decoding is strict: size limit first, exact key set, types, known
releases and codecs, one reason per rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from iotguard.errors import MalformedError

__all__ = ["MAX_MEDIA_OBJECT_BYTES", "MEDIA_CODECS", "MediaObject", "decode_media_object", "encode_media_object"]

#: Media objects larger than this are refused before decoding.
MAX_MEDIA_OBJECT_BYTES = 2 * 1024 * 1024
MEDIA_CODECS = ("wav", "png", "jpeg")
_RELEASES = ("anonymised", "raw")
_KEYS = {"ts", "p", "s", "r", "m", "c", "d"}


@dataclass(frozen=True)
class MediaObject:
    """One clip or frame as it leaves the device."""

    ts_ms: int
    purpose: str
    stream: str
    release: str
    method: str | None
    codec: str
    data: bytes

    def to_map(self) -> dict[str, Any]:
        """The CBOR map of the wire form."""
        return {"ts": self.ts_ms, "p": self.purpose, "s": self.stream, "r": self.release, "m": self.method,
                "c": self.codec, "d": self.data}


def encode_media_object(obj: MediaObject) -> bytes:
    """Canonical CBOR of a media object."""
    return bytes(cbor2.dumps(obj.to_map(), canonical=True))


def decode_media_object(data: bytes, *, max_size: int = MAX_MEDIA_OBJECT_BYTES) -> MediaObject:
    """Strictly decode a media object.

    Raises:
        MalformedError: too large, not CBOR, wrong keys or types, unknown release or codec.
    """
    if len(data) > max_size:
        raise MalformedError("media object too large")
    try:
        m = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, RecursionError, MemoryError) as exc:
        raise MalformedError(f"media object is not valid CBOR: {type(exc).__name__}") from None
    if not isinstance(m, dict) or set(m) != _KEYS:
        raise MalformedError("media object has missing or unknown keys")
    ts = m["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**63:
        raise MalformedError("media object timestamp must be a non-negative integer")
    for k in ("p", "s"):
        if not isinstance(m[k], str) or not 0 < len(m[k]) <= 32:
            raise MalformedError(f"media object {k!r} must be a short name")
    if m["r"] not in _RELEASES:
        raise MalformedError("media object release must be 'anonymised' or 'raw'")
    if m["m"] is not None and (not isinstance(m["m"], str) or len(m["m"]) > 64):
        raise MalformedError("media object method must be a short name or null")
    if m["r"] == "anonymised" and m["m"] is None:
        raise MalformedError("anonymised media must name its method")
    if m["c"] not in MEDIA_CODECS:
        raise MalformedError(f"media object codec must be one of {list(MEDIA_CODECS)}")
    if not isinstance(m["d"], bytes) or not m["d"]:
        raise MalformedError("media object data must be non-empty bytes")
    return MediaObject(ts, m["p"], m["s"], m["r"], m["m"], m["c"], m["d"])
