"""The fleet overview's read model: one filtered, paged SQL query over the registry and the posture.

Filtering, counting and paging happen in the database (``WHERE``, ``COUNT``,
keyset paging on the ``devices`` primary key: the rows after or before a
device id, never an ``OFFSET``), so a page of a 10,000-device fleet reads one
page of rows wherever it is, and a device added meanwhile neither repeats nor
hides a row on the next page. Last-seen times and firmware
versions are then read for that page's devices only. The view only reads:
the registry, posture, readings and attestation tables stay their owners'
(ADRs 1401, 1404).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from iotguard.errors import MalformedError
from iotguard.hub.policy_store import device_posture
from iotguard.hub.schema import devices, readings
from iotguard.hub.stores._sql import aware
from iotguard.hub.stores.attestation import results as attestation_results
from iotguard.policy.model import TRUST_TIERS

__all__ = ["DEVICE_STATUSES", "MAX_PAGE_SIZE", "FleetFilter", "FleetPage", "FleetRow", "SqlFleetView"]

#: Largest page the overview serves.
MAX_PAGE_SIZE = 200
#: Registry statuses a filter may name.
DEVICE_STATUSES = ("pending", "active", "revoked", "decommissioned")
_MAX_QUERY = 64
#: Longest device id a page cursor may name.
_MAX_CURSOR = 128


@dataclass(frozen=True)
class FleetFilter:
    """What the operator filters the fleet by (every field optional).

    Raises:
        MalformedError: a value outside its allowed set or length.
    """

    query: str = ""
    status: str = ""
    trust_tier: str = ""
    quarantined: bool | None = None
    after: str = ""
    before: str = ""
    page_size: int = 50

    def __post_init__(self) -> None:
        if len(self.query) > _MAX_QUERY:
            raise MalformedError("search text too long")
        if self.status and self.status not in DEVICE_STATUSES:
            raise MalformedError("unknown device status")
        if self.trust_tier and self.trust_tier not in TRUST_TIERS:
            raise MalformedError("unknown trust tier")
        if len(self.after) > _MAX_CURSOR or len(self.before) > _MAX_CURSOR or (self.after and self.before):
            raise MalformedError("a page starts after one device id or ends before one, at most 128 characters")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise MalformedError("page size out of range")


@dataclass(frozen=True)
class FleetRow:
    """One device as the overview shows it."""

    device_id: str
    model: str
    segment: str
    status: str
    trust_tier: str
    quarantined: bool
    risk_score: int
    firmware: str | None
    last_seen: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "model": self.model, "segment": self.segment, "status": self.status,
                "trust_tier": self.trust_tier, "quarantined": self.quarantined, "risk_score": self.risk_score,
                "firmware": self.firmware, "last_seen": self.last_seen.isoformat() if self.last_seen else None}


@dataclass(frozen=True)
class FleetPage:
    """A page of the filtered fleet, the filter's total, and where the page sits in it.

    Attributes:
        offset: How many matching devices come before the page's first row.
        has_previous: Matching devices exist before the first row (link ``before`` its id).
        has_next: Matching devices exist after the last row (link ``after`` its id).
    """

    rows: tuple[FleetRow, ...]
    total: int
    page_size: int
    offset: int = 0
    has_previous: bool = False
    has_next: bool = False


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqlFleetView:
    """The overview query on the hub's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def _conditions(f: FleetFilter) -> list[ColumnElement[bool]]:
        tier = func.coalesce(device_posture.c.trust_tier, "unverified")
        quarantined = func.coalesce(device_posture.c.quarantined, False)
        where: list[ColumnElement[bool]] = []
        if f.query:
            pattern = _like(f.query)
            where.append(or_(devices.c.device_id.like(pattern, escape="\\"),
                             devices.c.model.like(pattern, escape="\\"),
                             devices.c.segment.like(pattern, escape="\\")))
        if f.status:
            where.append(devices.c.status == f.status)
        if f.trust_tier:
            where.append(tier == f.trust_tier)
        if f.quarantined is not None:
            where.append(quarantined.is_(True) if f.quarantined else quarantined.is_(False))
        return where

    def page(self, f: FleetFilter) -> FleetPage:
        """One page of devices matching ``f``, ordered by device id, with the filter's total."""
        return self.overview(f)[0]

    def overview(self, f: FleetFilter) -> tuple[FleetPage, dict[str, int]]:
        """One page of devices matching ``f`` and the fleet's counts (:meth:`counts`), in one connection.

        Keyset paging: the page is the ``page_size`` matching ids after ``f.after`` (or before
        ``f.before``) in id order, one index walk from the cursor. Without a posture filter the page and
        its total are cut from ``devices`` alone and the posture of the page's devices is read after (no
        join over the whole fleet).
        """
        key = devices.c.device_id
        with self.engine.connect() as c:
            counts = self._counts(c)
            posture = bool(f.trust_tier or f.quarantined is not None)
            source = (devices.outerjoin(device_posture, device_posture.c.device_id == key) if posture
                      else devices)

            def matching(*extra: ColumnElement[bool]) -> Any:
                return select(key).select_from(source).where(and_(True, *self._conditions(f), *extra))

            def exists(*extra: ColumnElement[bool]) -> bool:
                return c.execute(matching(*extra).limit(1)).first() is not None

            if f.before:
                ids = [r[0] for r in c.execute(matching(key < f.before).order_by(key.desc())
                                               .limit(f.page_size + 1))][::-1]
                has_previous, ids = len(ids) > f.page_size, ids[-f.page_size:]
                has_next = exists(key >= f.before)
            else:
                start = (key > f.after,) if f.after else ()
                ids = [r[0] for r in c.execute(matching(*start).order_by(key).limit(f.page_size + 1))]
                has_next, ids = len(ids) > f.page_size, ids[:f.page_size]
                has_previous = bool(f.after) and exists(key <= f.after)
            where = and_(True, *self._conditions(f))
            if posture or f.query:
                total = int(c.execute(select(func.count()).select_from(source).where(where)).scalar_one())
            else:
                total = counts[f.status] if f.status else sum(counts[s] for s in DEVICE_STATUSES)
            offset = (int(c.execute(select(func.count()).select_from(source).where(where, key < ids[0]))
                          .scalar_one()) if ids and has_previous else 0)
            rows = self._rows(c, ids)
        return FleetPage(rows, total, f.page_size, offset, has_previous, has_next), counts

    def _rows(self, c: Any, ids: Sequence[str]) -> tuple[FleetRow, ...]:
        if not ids:
            return ()
        q = (select(devices.c.device_id, devices.c.model, devices.c.segment, devices.c.status,
                    device_posture.c.trust_tier, device_posture.c.quarantined, device_posture.c.risk_score)
             .select_from(devices.outerjoin(device_posture, device_posture.c.device_id == devices.c.device_id))
             .where(devices.c.device_id.in_(ids)).order_by(devices.c.device_id))
        found = c.execute(q).all()
        seen, firmware = self._last_seen(c, ids), self._firmware(c, ids)
        return tuple(FleetRow(r.device_id, r.model, r.segment, r.status, r.trust_tier or "unverified",
                              bool(r.quarantined), int(r.risk_score or 0), firmware.get(r.device_id),
                              seen.get(r.device_id)) for r in found)

    @staticmethod
    def _last_seen(c: Any, ids: Sequence[str]) -> dict[str, datetime | None]:
        if not ids:
            return {}
        q = (select(readings.c.device_id, func.max(readings.c.received_at))
             .where(readings.c.device_id.in_(ids)).group_by(readings.c.device_id))
        return {r[0]: aware(r[1]) for r in c.execute(q)}

    @staticmethod
    def _firmware(c: Any, ids: Sequence[str]) -> dict[str, str]:
        if not ids:
            return {}
        latest = (select(func.max(attestation_results.c.id)).where(attestation_results.c.device_id.in_(ids))
                  .group_by(attestation_results.c.device_id))
        q = select(attestation_results.c.device_id, attestation_results.c.firmware_version).where(
            attestation_results.c.id.in_(latest))
        return {r[0]: r[1] for r in c.execute(q)}

    def reading_floor(self, device_id: str, newest: int) -> int:
        """The reading id just below the device's ``newest`` newest readings (0 when it has fewer): reading
        after it returns exactly those. Only ids are read; bodies are read through the purpose-bound
        :class:`~iotguard.hub.services.data_access.DataAccessService`."""
        q = (select(readings.c.id).where(readings.c.device_id == device_id).order_by(readings.c.id.desc())
             .offset(max(1, min(newest, 1000)) - 1).limit(1))
        with self.engine.connect() as c:
            floor = c.execute(q).scalar_one_or_none()
        return int(floor) - 1 if floor is not None else 0

    def counts(self) -> dict[str, int]:
        """Devices per status and how many are quarantined (the overview's header)."""
        with self.engine.connect() as c:
            return self._counts(c)

    @staticmethod
    def _counts(c: Any) -> dict[str, int]:
        by_status = {r[0]: int(r[1]) for r in c.execute(select(devices.c.status, func.count())
                                                        .group_by(devices.c.status))}
        quarantined = int(c.execute(select(func.count()).select_from(device_posture)
                                    .where(device_posture.c.quarantined.is_(True))).scalar_one())
        return {**{s: by_status.get(s, 0) for s in DEVICE_STATUSES}, "quarantined": quarantined}
