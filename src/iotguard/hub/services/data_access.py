"""Purpose-bound access to personal data: raw readings, subject exports, anonymised extracts (ADR 0405).

Every path that reads stored readings (the API, the CLI, exports) comes
through :class:`DataAccessService`. The caller states a purpose; for each
device read, the hub establishes whether the device model's data contract
declares that purpose and whether the device's data subject consented to it
(an explicit, current grant), and Cedar decides ``read_telemetry`` on the
device with those facts in its context. Readings of a device Cedar refuses,
and readings collected for another purpose, are withheld. Each access is an
audit event (``data.accessed``: who, purpose, path, how many readings of how
many devices; no subject id, no reading body).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotguard.audit import AuditEvent, AuditSink
from iotguard.clock import Clock
from iotguard.errors import ConfigError, IotGuardError, PolicyDenied, UnknownDeviceError
from iotguard.hub.privacy_store import PrivacyStore, purpose_of
from iotguard.hub.stores.devices import SqlDeviceStore
from iotguard.hub.stores.telemetry import StoredReading, TelemetryStore
from iotguard.policy import PolicyEngine, authorize_operator
from iotguard.policy.model import PurposeFacts
from iotguard.privacy import DataContract
from iotguard.wire import decode_media_object, decode_reading

__all__ = ["DATA_ACCESSED", "K_ANONYMOUS_DATASET", "MAX_PURPOSE_LENGTH", "SUBJECT_ACCESS_PURPOSE",
           "DataAccessService", "Reader"]

log = logging.getLogger(__name__)

#: Audit event type of every read of personal data.
DATA_ACCESSED = "data.accessed"
#: The purpose of a data subject's own access request (GDPR art. 15), not a contract purpose.
SUBJECT_ACCESS_PURPOSE = "subject_access"
#: The Cedar ``Dataset`` of ``iotguard export``'s extracts: k-anonymous over data subjects, so anonymised.
K_ANONYMOUS_DATASET = "readings-k-anonymous"
#: Longest purpose name accepted (contract purposes are at most 32 characters).
MAX_PURPOSE_LENGTH = 32
_PAGE_MAX = 1000


@dataclass(frozen=True)
class Reader:
    """Who reads: an API token's name and role, or the CLI's operator."""

    name: str
    role: str
    path: str  # "api", "cli"


@dataclass
class DataAccessService:
    """Purpose-bound reads of stored readings and subject data.

    Args:
        telemetry: Stored readings (opened with the subject keyring).
        privacy: Subjects, consent and subject exports.
        devices: Device models (to find each device's contract).
        policy: The Cedar engine.
        audit: Where each access is logged.
        clock: Time source.
        contracts: A device model's data contract.
    """

    telemetry: TelemetryStore
    privacy: PrivacyStore
    devices: SqlDeviceStore
    policy: PolicyEngine
    audit: AuditSink
    clock: Clock
    contracts: Callable[[str], DataContract]

    # -- facts ------------------------------------------------------------------

    def purpose_facts(self, device_id: str, purpose: str, at: datetime) -> PurposeFacts:
        """Whether ``device_id``'s contract declares ``purpose`` and its subject consented to it now."""
        try:
            declared = purpose in self.contracts(self.devices.get_device(device_id).model).purposes
        except (ConfigError, UnknownDeviceError):
            declared = False
        subject = self.privacy.subject_of(device_id)
        decision = self.privacy.consent_state(subject).decisions.get(purpose) if subject else None
        consented = decision is not None and decision.granted and decision.at <= at
        return PurposeFacts(purpose, declared, consented)

    def _allowed_devices(self, reader: Reader, purpose: str, device_ids: set[str], at: datetime) -> set[str]:
        allowed = set()
        for d in sorted(device_ids):
            try:
                authorize_operator(self.policy, reader.name, reader.role, "read_telemetry", "Device", d, now=at,
                                   purpose=self.purpose_facts(d, purpose, at))
            except PolicyDenied:
                continue
            allowed.add(d)
        return allowed

    def _log(self, reader: Reader, at: datetime, what: str, purpose: str, **counts: int) -> None:
        self.audit.record(AuditEvent(DATA_ACCESSED, at, reader.name, what,
                                     {"purpose": purpose, "path": reader.path, "role": reader.role, **counts}))

    # -- raw readings ----------------------------------------------------------------

    def purpose_bound(self, reader: Reader, purpose: str, rows: list[StoredReading],
                      at: datetime) -> tuple[list[StoredReading], int]:
        """The rows ``reader`` may see for ``purpose``, and how many were withheld.

        A row is released when Cedar allows ``read_telemetry`` on its device
        with the purpose facts, and the reading was collected for that purpose.
        """
        return _release(rows, self._allowed_devices(reader, purpose, {r.device_id for r in rows}, at), purpose)

    def _check_purpose(self, reader: Reader, purpose: str, resource_type: str, resource_id: str,
                       at: datetime) -> None:
        if not purpose or len(purpose) > MAX_PURPOSE_LENGTH:
            raise PolicyDenied("a data access states its purpose")
        authorize_operator(self.policy, reader.name, reader.role, "read_telemetry", resource_type, resource_id,
                           now=at, purpose=PurposeFacts(purpose) if resource_type == "Hub" else
                           self.purpose_facts(resource_id, purpose, at))

    def read_readings(self, reader: Reader, purpose: str, *, after: int = 0, device_id: str | None = None,
                      limit: int = 100) -> dict[str, Any]:
        """Stored readings after id ``after`` that ``reader`` may see for ``purpose`` (poll with ``next``).

        Raises:
            PolicyDenied: no purpose, or Cedar refuses the read (of the fleet, or of ``device_id``).
        """
        at = self.clock.now()
        try:
            self._check_purpose(reader, purpose, "Device" if device_id else "Hub", device_id or "hub", at)
        except PolicyDenied:
            self._log(reader, at, device_id or "telemetry", purpose[:MAX_PURPOSE_LENGTH], refused=1)
            raise
        rows = self.telemetry.readings_after(after, device_id=device_id, limit=max(1, min(limit, _PAGE_MAX)))
        released, withheld = self.purpose_bound(reader, purpose, rows, at)
        if rows:  # a poll that finds nothing new reads nothing (``telemetry tail --follow``)
            self._log(reader, at, device_id or "telemetry", purpose, readings=len(released), withheld=withheld,
                      devices=len({r.device_id for r in released}))
        return {"items": [_item(r) for r in released], "withheld": withheld,
                "next": rows[-1].id if rows else after}

    def readings_for_export(self, reader: Reader, purpose: str, *, dataset: str = K_ANONYMOUS_DATASET
                            ) -> list[StoredReading]:
        """Every reading ``reader`` may use for ``purpose`` in an anonymised extract.

        Cedar decides ``export`` of ``dataset`` with the purpose, then
        ``read_telemetry`` per device as for :meth:`read_readings`.

        Raises:
            PolicyDenied: no purpose, or Cedar refuses the export.
        """
        at = self.clock.now()
        if not purpose or len(purpose) > MAX_PURPOSE_LENGTH:
            raise PolicyDenied("a data access states its purpose")
        authorize_operator(self.policy, reader.name, reader.role, "export", "Dataset", dataset, now=at,
                           purpose=PurposeFacts(purpose))
        rows: list[StoredReading] = []
        after = 0
        while True:
            page = self.telemetry.readings_after(after, limit=_PAGE_MAX)
            if not page:
                break
            rows.extend(page)
            after = page[-1].id
        released, withheld = self._export_bound(reader, purpose, rows, at)
        self._log(reader, at, dataset, purpose, readings=len(released), withheld=withheld,
                  devices=len({r.device_id for r in released}))
        return released

    def _export_bound(self, reader: Reader, purpose: str, rows: list[StoredReading],
                      at: datetime) -> tuple[list[StoredReading], int]:
        ids = {r.device_id for r in rows}
        return _release(rows, {d for d in ids if (f := self.purpose_facts(d, purpose, at)).declared and f.consented},
                        purpose)

    # -- a data subject's access request -----------------------------------------------

    def export_subject(self, reader: Reader, subject_id: str) -> dict[str, Any]:
        """Everything held about a data subject, for the subject (a ``manage_consent`` decision, logged).

        Raises:
            PolicyDenied: Cedar refuses.
        """
        at = self.clock.now()
        authorize_operator(self.policy, reader.name, reader.role, "manage_consent", now=at,
                           purpose=PurposeFacts(SUBJECT_ACCESS_PURPOSE))
        doc = self.privacy.export_subject(subject_id, at)
        self._log(reader, at, doc["audit_pseudonym"], SUBJECT_ACCESS_PURPOSE, readings=len(doc["readings"]),
                  devices=len(doc["devices"]))
        return doc


def _release(rows: list[StoredReading], allowed: set[str], purpose: str) -> tuple[list[StoredReading], int]:
    out = [r for r in rows if r.device_id in allowed and not r.sealed and purpose_of(r.body) == purpose]
    return out, len(rows) - len(out)


def _item(r: StoredReading) -> dict[str, Any]:
    try:
        if r.topic.endswith("/media"):  # media objects by their metadata, not their bytes
            m = decode_media_object(r.body)
            reading: dict[str, Any] = {"media": {"purpose": m.purpose, "stream": m.stream, "release": m.release,
                                                 "method": m.method, "codec": m.codec, "bytes": len(m.data)}}
        else:
            reading = decode_reading(r.body).to_dict()
    except IotGuardError:
        reading = {"raw": base64.b64encode(r.body).decode()}
    return {"id": r.id, "device_id": r.device_id, "epoch": r.epoch, "seq": r.seq,
            "received_at": r.received_at.isoformat(), **reading}
