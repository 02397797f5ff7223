"""Strict decoding of the canonical CBOR maps devices send (flow reports, health reports)."""

from __future__ import annotations

from collections.abc import Set
from typing import Any

import cbor2

from iotguard.errors import MalformedError

__all__ = ["decode_canonical_map"]


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
