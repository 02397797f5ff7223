"""The small structured query analysts send (``iotguard analytics query``, ``POST /v1/analytics/query``).

A query is a JSON object with exactly known keys::

    {"statistic": "mean", "field": "temp", "epsilon": 0.5, "lo": 0, "hi": 40,
     "max_per_subject": 3, "purpose": "research",
     "group_by": "room", "groups": ["kitchen", "hall"]}

``field`` names a reading field (``histogram``: its text value; ``count``:
readings that have it). ``group_by``/``groups`` answer per declared group
(a reading field holding text). Parsing is strict: an unknown key, a wrong
type or an out-of-range value is :class:`~iotguard.errors.MalformedError`
with the reason. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from iotguard.analytics.central import CentralQuery
from iotguard.errors import ConfigError, MalformedError

__all__ = ["StructuredQuery", "parse_query"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_KEYS = frozenset({"statistic", "field", "epsilon", "lo", "hi", "categories", "max_per_subject", "alpha",
                   "candidates", "group_by", "groups", "purpose"})
_MAX_TEXT = 64


@dataclass(frozen=True)
class StructuredQuery:
    """A parsed query: the central-DP query, the field it reads, its grouping and purpose."""

    query: CentralQuery
    field: str
    purpose: str
    group_by: str | None = None
    groups: tuple[str, ...] = ()


def _number(doc: Mapping[str, Any], key: str, default: float) -> float:
    v = doc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise MalformedError(f"query {key} must be a number")
    return float(v)


def _integer(doc: Mapping[str, Any], key: str, default: int) -> int:
    v = doc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise MalformedError(f"query {key} must be an integer")
    return v


def _name(doc: Mapping[str, Any], key: str, default: str | None = None) -> str:
    v = doc.get(key, default)
    if not isinstance(v, str) or not _NAME.fullmatch(v):
        raise MalformedError(f"query {key} must be a name of 1-32 letters, digits, '_', '.', '-'")
    return v


def _texts(doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
    v = doc.get(key, [])
    if not isinstance(v, list) or len(v) > 256 or not all(isinstance(x, str) and 0 < len(x) <= _MAX_TEXT for x in v):
        raise MalformedError(f"query {key} must be a list of at most 256 short texts")
    return tuple(v)


def parse_query(doc: Mapping[str, Any]) -> StructuredQuery:
    """Strictly parse a structured query.

    Raises:
        MalformedError: unknown key, wrong type, or a query :class:`CentralQuery` refuses.
    """
    if not isinstance(doc, Mapping):
        raise MalformedError("a query is a JSON object")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise MalformedError(f"unknown query keys: {', '.join(map(str, unknown))}")
    statistic = doc.get("statistic")
    if not isinstance(statistic, str):
        raise MalformedError("query statistic must be text")
    group_by = _name(doc, "group_by") if doc.get("group_by") is not None else None
    groups = _texts(doc, "groups")
    if (group_by is None) != (not groups):
        raise MalformedError("group_by and groups go together")
    q = CentralQuery(statistic, _number(doc, "epsilon", 0.0), _number(doc, "lo", 0.0), _number(doc, "hi", 0.0),
                     _texts(doc, "categories"), _integer(doc, "max_per_subject", 1), _number(doc, "alpha", 0.5),
                     _integer(doc, "candidates", 101))
    try:
        q.validate()
    except ConfigError as exc:
        raise MalformedError(f"query refused: {exc}") from None
    return StructuredQuery(q, _name(doc, "field"), _name(doc, "purpose"), group_by, groups)
