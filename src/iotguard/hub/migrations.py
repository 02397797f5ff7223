"""Versioned schema migrations, listed explicitly.

Each migration has a sortable id (``"0001_core"``, ``"0100_audit_log"``...) and
a function that applies it inside one transaction. ``migrate`` applies, in id
order, every migration the database has not recorded in
``iotguard_schema_migrations``. Components own id ranges (ADR 0004): 0001-0099
core, 0100-0199 audit, 0200-0299 policy, 0300-0399 privacy, 0400-0499 keys and
credentials, 0500-0599 device plane, 0700-0799 detection, 0800-0899 attestation,
1200-1299 firmware updates (ADR 1200), 1400-1499 console (ADR 1400). Each component module defines its table-creating
functions; this module imports them and lists them in :data:`MIGRATIONS` (no registration by
import side effect).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, MetaData, String, Table, select
from sqlalchemy.engine import Connection, Engine

from iotguard.hub.audit_store import create_audit_tables, create_final_checkpoint_table
from iotguard.hub.outbox import create_outbox_table
from iotguard.hub.policy_store import create_policy_tables
from iotguard.hub.privacy_store import create_privacy_tables
from iotguard.hub.ratelimit_store import create_device_plane_tables
from iotguard.hub.schema import (
    add_reading_key_id,
    add_replay_window_version,
    add_transport_cert_serial,
    create_core_tables,
    create_revoked_certificates,
)
from iotguard.hub.stores.aggregation_rounds import create_round_tables
from iotguard.hub.stores.alerts import create_detection_tables
from iotguard.hub.stores.attestation import (
    create_attestation_tables,
    create_ek_certificate_table,
    create_endorsement_table,
)
from iotguard.hub.stores.console import create_console_tables
from iotguard.hub.stores.credentials import create_credential_tables
from iotguard.hub.stores.data_keys import create_data_key_tables
from iotguard.hub.stores.detector_state import create_detector_state_table
from iotguard.hub.stores.firmware import create_firmware_tables
from iotguard.hub.stores.learning import create_learning_tables, create_secure_round_table
from iotguard.hub.stores.models import create_model_tables
from iotguard.hub.stores.receipts import add_receipt_once_index
from iotguard.hub.stores.rollouts import create_rollout_tables
from iotguard.hub.stores.subject_ledger import create_subject_charge_once_table, create_subject_ledger_tables
from iotguard.hub.stores.subjects import add_contribution_kind
from iotguard.hub.stores.tombstones import create_tombstone_tables

__all__ = ["MIGRATIONS", "Migration", "applied_migrations", "migrate"]

_meta = MetaData()
_versions = Table(
    "iotguard_schema_migrations",
    _meta,
    Column("id", String(64), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Migration:
    """One schema change."""

    id: str
    description: str
    apply: Callable[[Connection], None]


#: Every migration, in the order it is applied (ids sort the same way).
MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_core", "devices, tokens, key epochs, replay windows, readings", create_core_tables),
    Migration("0002_revoked_certificates", "serials kept on the CRL across re-provisioning",
              create_revoked_certificates),
    Migration("0003_transport_cert_serial", "serial of each device's TLS transport certificate (ADR 0600)",
              add_transport_cert_serial),
    Migration("0004_outbox", "transactional outbox of side effects", create_outbox_table),
    Migration("0005_replay_window_version", "replay windows saved compare-and-swap by hub processes",
              add_replay_window_version),
    Migration("0100_audit_log", "audit log entries, subtree hashes, sequencer state, checkpoints",
              create_audit_tables),
    Migration("0110_final_checkpoints", "checkpoints made final by k-of-n witness cosignatures",
              create_final_checkpoint_table),
    Migration("0200_policy", "policy versions, activations, device posture", create_policy_tables),
    Migration("0300_privacy", "consent, receipts, budget ledger, subject keys, erasure records",
              create_privacy_tables),
    Migration("0310_subject_data_keys", "per-subject data keys, each wrapped under its own key-store key (ADR 0405)",
              create_data_key_tables),
    Migration("0311_reading_key_id", "readings name the subject data key sealing their body (ADR 0405)",
              add_reading_key_id),
    Migration("0312_contribution_kind", "contributions name an aggregate, a model or an export (ADR 0405)",
              add_contribution_kind),
    Migration("0340_subject_ledger", "per-subject privacy-loss ledger: central and federated spends (ADR 0410)",
              create_subject_ledger_tables),
    Migration("0341_subject_ledger_charge_once", "a keyed charge charges each subject once (ADR 1304)",
              create_subject_charge_once_table),
    Migration("0400_credentials", "bootstrap token, API token usage, model end of support",
              create_credential_tables),
    Migration("0410_erasure_tombstones", "erased subjects named by a keyed hash a restore can recompute (ADR 0413)",
              create_tombstone_tables),
    Migration("0420_aggregation_rounds", "aggregation rounds and their step logs shared by hub processes (ADR 0414)",
              create_round_tables),
    Migration("0500_device_plane", "attempt limits and signed-request nonces shared by hub processes",
              create_device_plane_tables),
    Migration("0700_detection", "detection alerts and the response actions taken for them",
              create_detection_tables),
    Migration("0710_detector_state", "each device's detector state, versioned, shared by hub processes (ADR 0751)",
              create_detector_state_table),
    Migration("0800_attestation", "attestation nonces, keys, appraisal results, reference values, policies",
              create_attestation_tables),
    Migration("0810_attestation_endorsements", "TPM endorsement keys and the attestation keys certified against them",
              create_endorsement_table),
    Migration("0820_attestation_ek_certificates", "EK certificate chains recorded with TPM endorsement keys (ADR 0812)",
              create_ek_certificate_table),
    Migration("1200_firmware", "firmware TUF repository files (ADR 1200)", create_firmware_tables),
    Migration("1210_rollouts", "firmware rollout campaigns and device install reports (ADR 1210)",
              create_rollout_tables),
    Migration("1300_learned_models", "signed model artifacts published by the hub (ADR 1300)", create_model_tables),
    Migration("1301_learning_runs", "federated training runs and their pending updates (ADR 1300)",
              create_learning_tables),
    Migration("1302_learning_secure_rounds", "each secure run version's aggregation round, bound compare-and-swap "
              "(ADR 1304)", create_secure_round_table),
    Migration("1400_console", "console sessions and device-owner access tokens (ADR 1400)", create_console_tables),
    Migration("1510_receipt_once", "a privacy receipt is stored once per device and signature (unique index, ADR 1504)",
              add_receipt_once_index),
)


def applied_migrations(engine: Engine) -> list[str]:
    """Ids of the migrations recorded in the database."""
    with engine.begin() as conn:
        _versions.create(conn, checkfirst=True)
        return [r[0] for r in conn.execute(select(_versions.c.id).order_by(_versions.c.id))]


def migrate(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Apply every pending migration; returns the ids applied now.

    Raises:
        ValueError: two migrations share an id.
    """
    ids = [m.id for m in migrations]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate migration id")
    done = set(applied_migrations(engine))
    applied: list[str] = []
    for m in sorted(migrations, key=lambda m: m.id):
        if m.id in done:
            continue
        with engine.begin() as conn:
            m.apply(conn)
            conn.execute(_versions.insert().values(id=m.id, applied_at=datetime.now(tz=UTC)))
        applied.append(m.id)
    return applied
