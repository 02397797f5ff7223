"""Strict decoding of the canonical CBOR maps devices send (flow reports, health reports) and of the float
arrays stored detector state carries."""

from __future__ import annotations

import math
from collections.abc import Set
from typing import Any

import cbor2
import numpy as np
import numpy.typing as npt

from iotguard.errors import MalformedError

__all__ = ["decode_canonical_map", "float64_array"]


def float64_array(value: Any, shape: tuple[int, ...], what: str) -> npt.NDArray[np.float64]:
    """``value`` as a finite float64 array of exactly ``shape`` (little-endian bytes of exactly that length).

    Raises:
        MalformedError: ``detector_state_bad_value`` (``what`` names the field).
    """
    if not isinstance(value, bytes) or len(value) != 8 * math.prod(shape):
        raise MalformedError(f"{what} must be {shape} little-endian float64", code="detector_state_bad_value")
    out = np.frombuffer(value, dtype="<f8").astype(np.float64).reshape(shape)
    if not np.isfinite(out).all():
        raise MalformedError(f"{what} must be finite", code="detector_state_bad_value")
    return out


def decode_canonical_map(data: bytes, *, max_bytes: int, keys: Set[str], version: int, prefix: str,
                         what: str) -> dict[str, Any]:
    """The map encoded by ``data``: size checked before parsing, exactly ``keys``, canonical, ``v == version``.

    Raises:
        MalformedError: ``<prefix>_too_large``, ``<prefix>_not_cbor``,
            ``<prefix>_bad_keys``, ``<prefix>_not_canonical`` or ``<prefix>_version``.
    """
    def fail(code: str, problem: str) -> MalformedError:
        return MalformedError(f"{what}: {problem}", code=f"{prefix}_{code}")

    if len(data) > max_bytes:
        raise fail("too_large", f"{len(data)} bytes, limit {max_bytes}")
    try:
        body = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        raise fail("not_cbor", "not valid CBOR") from None
    if not isinstance(body, dict) or set(body) != keys:
        raise fail("bad_keys", "not a map with exactly the expected keys")
    try:
        canonical = cbor2.dumps(body, canonical=True)
    except (cbor2.CBOREncodeError, ValueError, TypeError):
        raise fail("not_canonical", "not canonical CBOR") from None
    if canonical != data:
        raise fail("not_canonical", "not canonical CBOR")
    if type(body["v"]) is not int or body["v"] != version:
        raise fail("version", "unsupported version")
    return body
