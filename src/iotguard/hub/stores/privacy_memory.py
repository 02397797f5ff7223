"""Receipts and subject records in memory, for unit tests (same contracts as the SQL stores)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from iotguard.audit import AuditSink
from iotguard.errors import KeyStoreError, MalformedError
from iotguard.hub.stores.receipts import budget_event, verified_claims
from iotguard.hub.stores.subjects import CONTRIBUTION_KINDS, open_with_subject_key, seal_with_subject_key
from iotguard.privacy.contract import DataContract
from iotguard.privacy.ledger import EPSILON_RESOLUTION
from iotguard.privacy.receipt import PrivacyReceipt

__all__ = ["MemoryReceiptStore", "MemorySubjectStore"]


class MemoryReceiptStore:
    """:class:`~iotguard.hub.stores.receipts.ReceiptStore` in memory."""

    def __init__(self, audit: AuditSink | None = None) -> None:
        self.audit = audit
        self._receipts: list[tuple[str, str, datetime, PrivacyReceipt]] = []
        self._ledger: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def store_receipt(self, device_id: str, receipt: PrivacyReceipt | bytes, public_key: bytes,
                      received_at: datetime, *, contract: DataContract | None = None) -> dict[str, Any]:
        r, claims = verified_claims(device_id, receipt, public_key, contract)
        units = round(claims["epsilon_period_total"] / EPSILON_RESOLUTION)
        with self._lock:
            if any(d == device_id and held.signature == r.signature for d, _m, _t, held in self._receipts):
                return claims  # a resend of one already stored (the device's answer was lost): stored once
            self._receipts.append((device_id, claims["model"], received_at, r))
            key = (device_id, int(claims["period"]))
            self._ledger[key] = max(self._ledger.get(key, 0), units)
        if self.audit is not None:
            self.audit.record(budget_event(device_id, claims, received_at))
        return claims

    def receipts_of(self, device_id: str) -> list[PrivacyReceipt]:
        return [r for d, _m, _t, r in self._receipts if d == device_id]

    def spent_units(self, device_id: str, period: int) -> int:
        return self._ledger.get((device_id, period), 0)

    def receipt_models(self) -> list[str]:
        return sorted({m for _d, m, _t, _r in self._receipts})

    def delete_receipts_before(self, model: str, before: datetime) -> int:
        with self._lock:
            keep = [x for x in self._receipts if not (x[1] == model and x[2] < before)]
            gone = len(self._receipts) - len(keep)
            self._receipts = keep
        return gone


class MemorySubjectStore:
    """:class:`~iotguard.hub.stores.subjects.SubjectStore` in memory (keys kept in clear: tests only)."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._contributions: dict[str, dict[str, str]] = {}
        self._erasures: dict[str, list[Mapping[str, Any]]] = {}

    def record_contribution(self, subject_id: str, aggregate_id: str, description: str, at: datetime, *,
                            kind: str = "aggregate") -> None:
        if kind not in CONTRIBUTION_KINDS:
            raise MalformedError(f"unknown contribution kind {kind!r}")
        self._contributions.setdefault(subject_id, {})[f"{kind}:{aggregate_id}"] = description

    def seal_for_subject(self, subject_id: str, plaintext: bytes, at: datetime) -> bytes:
        key = self._keys.setdefault(subject_id, AESGCM.generate_key(bit_length=256))
        return seal_with_subject_key(key, subject_id, plaintext)

    def open_for_subject(self, subject_id: str, sealed: bytes) -> bytes:
        key = self._keys.get(subject_id)
        if key is None:
            raise KeyStoreError("no key for this subject (erased?)")
        return open_with_subject_key(key, subject_id, sealed)

    def erasures_of(self, subject_id: str) -> list[dict[str, Any]]:
        return [dict(e) for e in self._erasures.get(subject_id, [])]

    def forget_subject_data(self, conn: Any, subject_id: str, *, device_ids: Sequence[str] = (),
                            at: datetime | None = None) -> tuple[tuple[str, ...], bool]:
        aggs = tuple(sorted(self._contributions.pop(subject_id, {})))
        return aggs, self._keys.pop(subject_id, None) is not None

    def record_erasure(self, conn: Any, subject_id: str, at: datetime, actor: str, summary: str) -> None:
        self._erasures.setdefault(subject_id, []).append(json.loads(summary))
