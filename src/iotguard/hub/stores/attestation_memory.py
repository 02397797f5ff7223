"""In-process :class:`~iotguard.hub.stores.attestation.AttestationStore` (tests, single-process tools)."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from iotguard.attestation import ReferenceRelease
from iotguard.hub.stores._sql import utc
from iotguard.hub.stores.attestation import Endorsement, StoredAppraisal
from iotguard.keys.rot import AttestationKey

__all__ = ["MemoryAttestationStore"]


class MemoryAttestationStore:
    """The attestation state in dictionaries, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nonces: dict[bytes, tuple[str, datetime]] = {}
        self._keys: dict[str, AttestationKey] = {}
        self._results: list[StoredAppraisal] = []
        self._references: dict[tuple[str, str], ReferenceRelease] = {}
        self._policies: dict[str, str] = {}
        self._endorsements: dict[str, Endorsement] = {}

    def issue_nonce(self, device_id: str, nonce: bytes, expires_at: datetime) -> None:
        with self._lock:
            if nonce in self._nonces:
                raise ValueError("nonce issued twice")
            self._nonces[nonce] = (device_id, utc(expires_at))

    def take_nonce(self, device_id: str, nonce: bytes, now: datetime) -> bool:
        with self._lock:
            entry = self._nonces.get(nonce)
            if entry is None or entry[0] != device_id:
                return False
            del self._nonces[nonce]
            return entry[1] > utc(now)

    def purge_nonces(self, now: datetime) -> int:
        with self._lock:
            gone = [n for n, (_, expires) in self._nonces.items() if expires <= utc(now)]
            for n in gone:
                del self._nonces[n]
            return len(gone)

    def nonce_pending(self, device_id: str, nonce: bytes, now: datetime) -> bool:
        with self._lock:
            entry = self._nonces.get(nonce)
        return entry is not None and entry[0] == device_id and entry[1] > utc(now)

    def conclude(self, tx: Any, device_id: str, nonce: bytes, now: datetime, appraisal: StoredAppraisal) -> bool:
        if not self.take_nonce(device_id, nonce, now):
            return False
        self.record(appraisal)
        return True

    def bind_key(self, device_id: str, key: AttestationKey, now: datetime) -> AttestationKey:
        with self._lock:
            return self._keys.setdefault(device_id, key)

    def key_of(self, device_id: str) -> AttestationKey | None:
        with self._lock:
            return self._keys.get(device_id)

    def record(self, appraisal: StoredAppraisal) -> None:
        with self._lock:
            self._results.append(appraisal)

    def history(self, device_id: str, limit: int = 20) -> list[StoredAppraisal]:
        with self._lock:
            mine = [r for r in self._results if r.device_id == device_id]
        return list(reversed(mine))[:limit]

    def add_reference(self, release: ReferenceRelease, now: datetime) -> None:
        with self._lock:
            self._references[(release.model, release.version)] = release

    def remove_reference(self, model: str, version: str) -> bool:
        with self._lock:
            return self._references.pop((model, version), None) is not None

    def references(self) -> list[ReferenceRelease]:
        with self._lock:
            return [self._references[k] for k in sorted(self._references)]

    def set_policy(self, model: str, text: str, now: datetime) -> None:
        with self._lock:
            self._policies[model] = text

    def policies(self) -> dict[str, str]:
        with self._lock:
            return dict(self._policies)

    def set_endorsement_key(self, device_id: str, ek_public: bytes, now: datetime,
                            ek_certificate: bytes = b"") -> None:
        with self._lock:
            self._endorsements[device_id] = Endorsement(device_id, ek_public, None, ek_certificate)

    def endorsement(self, device_id: str) -> Endorsement | None:
        with self._lock:
            return self._endorsements.get(device_id)

    def certify_key(self, device_id: str, ek_public: bytes, key: AttestationKey, now: datetime) -> bool:
        with self._lock:
            current = self._endorsements.get(device_id)
            if current is None or current.ek_public != ek_public:
                return False
            self._endorsements[device_id] = Endorsement(device_id, ek_public, key, current.ek_certificate)
            return True
