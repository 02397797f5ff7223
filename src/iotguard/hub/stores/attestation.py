"""The hub's attestation state: nonces issued, attestation keys, appraisal results, reference values, policies.

Tables (migration ``0800_attestation``): ``attestation_nonces`` (each nonce
the hub issued, single use, with its expiry), ``attestation_keys`` (the
attestation key bound to each device), ``attestation_results`` (every
appraisal, newest last), ``attestation_references`` (allowed firmware
releases per model: several versions at once) and ``attestation_policies``
(the appraisal policy text per model); migration ``0810_attestation_endorsements``
adds ``attestation_endorsements`` (each TPM device's endorsement key, recorded
at enrollment, and the attestation key certified against it by credential
activation); migration ``0820_attestation_ek_certificates`` adds
``attestation_ek_certificates`` (the EK certificate chain recorded with it). :class:`SqlAttestationStore` keeps
them in the hub database (SQLite or PostgreSQL, shared by hub processes);
:class:`MemoryAttestationStore` (in ``attestation_memory``) in a process.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    bindparam,
    delete,
    select,
)
from sqlalchemy.engine import Connection, Engine

from iotguard.attestation import ReferenceRelease, reference_release
from iotguard.hub.db import metadata
from iotguard.hub.stores._sql import SqlStoreBase, aware_utc, utc
from iotguard.keys.rot import AttestationKey, AttestationKeyAlgorithm

__all__ = [
    "AttestationStore",
    "Endorsement",
    "SqlAttestationStore",
    "StoredAppraisal",
    "create_attestation_tables",
    "create_ek_certificate_table",
    "create_endorsement_table",
]

nonces = Table(
    "attestation_nonces",
    metadata,
    Column("nonce", LargeBinary(32), primary_key=True),
    Column("device_id", String(64), nullable=False, index=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

keys = Table(
    "attestation_keys",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("public_key", LargeBinary(256), nullable=False),
    Column("bound_at", DateTime(timezone=True), nullable=False),
)

results = Table(
    "attestation_results",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False, index=True),
    Column("appraised_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reasons", Text, nullable=False),
    Column("firmware_version", String(64), nullable=False),
    Column("keystore_kind", String(32), nullable=False),
)

references = Table(
    "attestation_references",
    metadata,
    Column("model", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("measurements", Text, nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("model", "version"),
)

policies = Table(
    "attestation_policies",
    metadata,
    Column("model", String(64), primary_key=True),
    Column("text", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

endorsements = Table(
    "attestation_endorsements",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("ek_public", LargeBinary(1024), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("certified_algorithm", String(16), nullable=True),
    Column("certified_public_key", LargeBinary(256), nullable=True),
    Column("certified_at", DateTime(timezone=True), nullable=True),
)

ek_certificates = Table(
    "attestation_ek_certificates",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("certificate", LargeBinary(16384), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

_TABLES = (nonces, keys, results, references, policies)


# The statements of every appraisal, built once (building a statement costs more CPU than running it).
_NONCE_EXPIRY = select(nonces.c.expires_at).where(nonces.c.nonce == bindparam("nonce"),
                                                  nonces.c.device_id == bindparam("device_id"))
_TAKE_NONCE = (delete(nonces).where(nonces.c.nonce == bindparam("nonce"), nonces.c.device_id == bindparam("device_id"))
               .returning(nonces.c.expires_at))
_KEY_OF = select(keys.c.algorithm, keys.c.public_key).where(keys.c.device_id == bindparam("device_id"))
_ENDORSEMENT = (select(endorsements.c.ek_public, endorsements.c.certified_algorithm,
                       endorsements.c.certified_public_key, ek_certificates.c.certificate)
                .select_from(endorsements.outerjoin(ek_certificates,
                                                    ek_certificates.c.device_id == endorsements.c.device_id))
                .where(endorsements.c.device_id == bindparam("device_id")))
_REFERENCES = (select(references.c.model, references.c.version, references.c.measurements)
               .order_by(references.c.model, references.c.version))
_POLICIES = select(policies.c.model, policies.c.text)
_RECORD = results.insert()


def create_attestation_tables(conn: Connection) -> None:
    """Migration ``0800_attestation``."""
    for table in _TABLES:
        table.create(conn, checkfirst=True)


def create_endorsement_table(conn: Connection) -> None:
    """Migration ``0810_attestation_endorsements``."""
    endorsements.create(conn, checkfirst=True)


def create_ek_certificate_table(conn: Connection) -> None:
    """Migration ``0820_attestation_ek_certificates``."""
    ek_certificates.create(conn, checkfirst=True)


@dataclass(frozen=True)
class Endorsement:
    """A TPM device's endorsement key and the attestation key certified against it.

    Attributes:
        device_id: The device.
        ek_public: Marshalled ``TPM2B_PUBLIC`` of its TPM's endorsement key (recorded at enrollment).
        certified_key: The AK that proved, by credential activation, to be
            resident in the TPM holding that EK; ``None`` until one has.
        ek_certificate: The EK certificate chain recorded with it (DER or PEM,
            leaf first; ``b""`` if none): checked against the manufacturer
            roots before an AK is certified (ADR 0812).
    """

    device_id: str
    ek_public: bytes
    certified_key: AttestationKey | None
    ek_certificate: bytes = b""


@dataclass(frozen=True)
class StoredAppraisal:
    """One appraisal as the hub recorded it.

    Attributes:
        device_id: The appraised device.
        appraised_at: When (aware UTC).
        status: The overall AR4SI tier (``affirming``, ``warning``, ``contraindicated``, ``none``).
        reasons: Reason codes of the appraisal (empty when affirming).
        firmware_version: Version the evidence claimed ("" when unreadable).
        keystore_kind: Root-of-trust kind the evidence claimed ("" when unreadable).
    """

    device_id: str
    appraised_at: datetime
    status: str
    reasons: tuple[str, ...]
    firmware_version: str
    keystore_kind: str


class AttestationStore(Protocol):
    """Attestation state of the fleet (one contract suite: tests/hub/test_attestation_store.py)."""

    def issue_nonce(self, device_id: str, nonce: bytes, expires_at: datetime) -> None:
        """Record a nonce issued to ``device_id``."""
        ...

    def take_nonce(self, device_id: str, nonce: bytes, now: datetime) -> bool:
        """Consume a nonce: True once if it was issued to ``device_id`` and has not expired; then never again."""
        ...

    def purge_nonces(self, now: datetime) -> int:
        """Forget expired nonces; returns how many."""
        ...

    def nonce_pending(self, device_id: str, nonce: bytes, now: datetime) -> bool:
        """Whether ``nonce`` was issued to ``device_id``, is unused and unexpired (a read: nothing consumed)."""
        ...

    def conclude(self, tx: Any, device_id: str, nonce: bytes, now: datetime, appraisal: StoredAppraisal) -> bool:
        """Consume ``nonce`` and record ``appraisal`` inside the caller's transaction ``tx``.

        ``tx`` is an open SQLAlchemy ``Connection`` in a transaction for the
        SQL store (ignored in memory). Returns False, recording nothing, when
        the nonce was not issued to the device, was used or has expired: the
        caller then rolls the transaction back. Two hub processes answering
        with one nonce cannot both see True: the nonce row is deleted in the
        transaction that writes the result.
        """
        ...

    def bind_key(self, device_id: str, key: AttestationKey, now: datetime) -> AttestationKey:
        """Bind ``key`` to the device unless one is bound already; returns the bound key."""
        ...

    def key_of(self, device_id: str) -> AttestationKey | None:
        """The attestation key bound to the device, if any."""
        ...

    def record(self, appraisal: StoredAppraisal) -> None:
        """Append one appraisal."""
        ...

    def history(self, device_id: str, limit: int = 20) -> list[StoredAppraisal]:
        """The device's latest appraisals, newest first."""
        ...

    def add_reference(self, release: ReferenceRelease, now: datetime) -> None:
        """Allow a release (replaces the same model and version)."""
        ...

    def remove_reference(self, model: str, version: str) -> bool:
        """Stop allowing a release; False if it was not allowed."""
        ...

    def references(self) -> list[ReferenceRelease]:
        """Every allowed release, by model then version."""
        ...

    def set_policy(self, model: str, text: str, now: datetime) -> None:
        """Store the appraisal policy text of ``model`` (a ``[models.<model>]`` TOML document)."""
        ...

    def policies(self) -> dict[str, str]:
        """Appraisal policy texts by model."""
        ...

    def set_endorsement_key(self, device_id: str, ek_public: bytes, now: datetime,
                            ek_certificate: bytes = b"") -> None:
        """Record the device's EK and its certificate chain (replacing what was recorded, and forgetting
        the AK certified against the old EK)."""
        ...

    def endorsement(self, device_id: str) -> Endorsement | None:
        """The device's EK and certified AK, if an EK was recorded."""
        ...

    def certify_key(self, device_id: str, ek_public: bytes, key: AttestationKey, now: datetime) -> bool:
        """Record ``key`` as certified against ``ek_public``; False if that is no longer the device's EK."""
        ...


def encode_measurements(measurements: Mapping[str, bytes]) -> str:
    """Reference measurements as stored: JSON ``{stage: hex digest}``."""
    return json.dumps({k: v.hex() for k, v in sorted(measurements.items())})


@functools.lru_cache(maxsize=1024)
def decode_release(model: str, version: str, text: str) -> ReferenceRelease:
    """A stored release back (validated again: a corrupted row raises ``ConfigError``).

    Decoded once per distinct row (releases are immutable values): every
    appraisal reads the rows afresh, but does not parse them again.
    """
    raw = json.loads(text)
    return reference_release(model, version, {str(k): bytes.fromhex(str(v)) for k, v in raw.items()})


class SqlAttestationStore(SqlStoreBase):
    """:class:`AttestationStore` on the hub database."""

    def __init__(self, engine: Engine) -> None:
        self._bind(engine)

    def issue_nonce(self, device_id: str, nonce: bytes, expires_at: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(nonces.insert().values(nonce=nonce, device_id=device_id, expires_at=utc(expires_at)))

    def take_nonce(self, device_id: str, nonce: bytes, now: datetime) -> bool:
        with self.engine.begin() as c:
            row = c.execute(delete(nonces).where(nonces.c.nonce == nonce, nonces.c.device_id == device_id)
                            .returning(nonces.c.expires_at)).first()
        return row is not None and aware_utc(row[0]) > utc(now)

    def purge_nonces(self, now: datetime) -> int:
        with self.engine.begin() as c:
            return int(c.execute(delete(nonces).where(nonces.c.expires_at <= utc(now))).rowcount or 0)

    def nonce_pending(self, device_id: str, nonce: bytes, now: datetime) -> bool:
        with self.engine.connect() as c:
            row = c.execute(_NONCE_EXPIRY, {"nonce": nonce, "device_id": device_id}).first()
        return row is not None and aware_utc(row[0]) > utc(now)

    def conclude(self, tx: Any, device_id: str, nonce: bytes, now: datetime, appraisal: StoredAppraisal) -> bool:
        conn: Connection = tx
        row = conn.execute(_TAKE_NONCE, {"nonce": nonce, "device_id": device_id}).first()
        if row is None or aware_utc(row[0]) <= utc(now):
            return False
        conn.execute(_RECORD, self._result_values(appraisal))
        return True

    def bind_key(self, device_id: str, key: AttestationKey, now: datetime) -> AttestationKey:
        bound = self.key_of(device_id)  # bound already (every appraisal but the first): no write
        if bound is not None:
            return bound
        with self.engine.begin() as c:
            c.execute(self._upsert(keys).values(device_id=device_id, algorithm=key.algorithm.value,
                                                public_key=key.public_key, bound_at=utc(now))
                      .on_conflict_do_nothing(index_elements=[keys.c.device_id]))
            row = c.execute(select(keys.c.algorithm, keys.c.public_key).where(keys.c.device_id == device_id)).one()
        return AttestationKey(AttestationKeyAlgorithm(row[0]), bytes(row[1]))

    def key_of(self, device_id: str) -> AttestationKey | None:
        with self.engine.connect() as c:
            row = c.execute(_KEY_OF, {"device_id": device_id}).first()
        return None if row is None else AttestationKey(AttestationKeyAlgorithm(row[0]), bytes(row[1]))

    def record(self, appraisal: StoredAppraisal) -> None:
        with self.engine.begin() as c:
            c.execute(_RECORD, self._result_values(appraisal))

    @staticmethod
    def _result_values(appraisal: StoredAppraisal) -> dict[str, Any]:
        return {"device_id": appraisal.device_id, "appraised_at": utc(appraisal.appraised_at),
                "status": appraisal.status, "reasons": json.dumps(list(appraisal.reasons)),
                "firmware_version": appraisal.firmware_version[:64], "keystore_kind": appraisal.keystore_kind[:32]}

    def history(self, device_id: str, limit: int = 20) -> list[StoredAppraisal]:
        with self.engine.connect() as c:
            rows = c.execute(select(results).where(results.c.device_id == device_id)
                             .order_by(results.c.id.desc()).limit(limit)).mappings().all()
        return [StoredAppraisal(r["device_id"], aware_utc(r["appraised_at"]), r["status"],
                                tuple(json.loads(r["reasons"])), r["firmware_version"], r["keystore_kind"])
                for r in rows]

    def add_reference(self, release: ReferenceRelease, now: datetime) -> None:
        values = {"model": release.model, "version": release.version,
                  "measurements": encode_measurements(release.measurements), "added_at": utc(now)}
        with self.engine.begin() as c:
            c.execute(self._upsert(references).values(**values).on_conflict_do_update(
                index_elements=[references.c.model, references.c.version],
                set_={"measurements": values["measurements"], "added_at": values["added_at"]}))

    def remove_reference(self, model: str, version: str) -> bool:
        with self.engine.begin() as c:
            gone = c.execute(delete(references).where(references.c.model == model,
                                                      references.c.version == version)).rowcount
        return bool(gone)

    def references(self) -> list[ReferenceRelease]:
        with self.engine.connect() as c:
            rows = c.execute(_REFERENCES).all()
        return [decode_release(m, v, t) for m, v, t in rows]

    def set_policy(self, model: str, text: str, now: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(self._upsert(policies).values(model=model, text=text, updated_at=utc(now))
                      .on_conflict_do_update(index_elements=[policies.c.model],
                                             set_={"text": text, "updated_at": utc(now)}))

    def policies(self) -> dict[str, str]:
        with self.engine.connect() as c:
            return {m: t for m, t in c.execute(_POLICIES)}

    def set_endorsement_key(self, device_id: str, ek_public: bytes, now: datetime,
                            ek_certificate: bytes = b"") -> None:
        values = {"ek_public": ek_public, "recorded_at": utc(now), "certified_algorithm": None,
                  "certified_public_key": None, "certified_at": None}
        with self.engine.begin() as c:
            c.execute(self._upsert(endorsements).values(device_id=device_id, **values)
                      .on_conflict_do_update(index_elements=[endorsements.c.device_id], set_=values))
            c.execute(delete(ek_certificates).where(ek_certificates.c.device_id == device_id))
            if ek_certificate:
                c.execute(ek_certificates.insert().values(device_id=device_id, certificate=ek_certificate,
                                                          recorded_at=utc(now)))

    def endorsement(self, device_id: str) -> Endorsement | None:
        with self.engine.connect() as c:
            row = c.execute(_ENDORSEMENT, {"device_id": device_id}).first()
        if row is None:
            return None
        key = None if row[1] is None else AttestationKey(AttestationKeyAlgorithm(row[1]), bytes(row[2]))
        return Endorsement(device_id, bytes(row[0]), key, b"" if row[3] is None else bytes(row[3]))

    def certify_key(self, device_id: str, ek_public: bytes, key: AttestationKey, now: datetime) -> bool:
        e = endorsements.c
        with self.engine.begin() as c:
            done = c.execute(endorsements.update().where(e.device_id == device_id, e.ek_public == ek_public)
                             .values(certified_algorithm=key.algorithm.value, certified_public_key=key.public_key,
                                     certified_at=utc(now))).rowcount
        return bool(done)
