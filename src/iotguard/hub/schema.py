"""Core hub tables (migrations ``0001_core`` and ``0002_revoked_certificates``)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import Connection

from iotguard.hub.db import metadata

__all__ = [
    "add_reading_key_id",
    "add_transport_cert_serial",
    "api_tokens",
    "create_core_tables",
    "create_revoked_certificates",
    "devices",
    "enrollment_tokens",
    "hub_meta",
    "key_epochs",
    "readings",
    "rejections",
    "replay_windows",
    "revoked_certificates",
]

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("model", String(64), nullable=False),
    Column("serial", String(128), nullable=True),
    Column("segment", String(64), nullable=False),
    # pending -> active -> revoked | decommissioned
    Column("status", String(16), nullable=False),
    Column("identity_public_key", LargeBinary, nullable=True),
    Column("cert_pem", Text, nullable=True),
    Column("cert_serial", String(64), nullable=True),
    Column("cert_not_after", DateTime(timezone=True), nullable=True),
    # Serial of the TLS client certificate for the device's transport key (ADR 0600).
    Column("transport_cert_serial", String(64), nullable=True),
    Column("current_epoch", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("enrolled_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    # Only a SHA-256 of the token is stored; the token itself is shown once.
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("device_id", String(64), nullable=False, index=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

key_epochs = Table(
    "key_epochs",
    metadata,
    Column("device_id", String(64), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("suite", String(32), nullable=False),
    # Session key wrapped (AES-GCM) under the hub's storage key; never in clear.
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("device_id", "epoch"),
)

replay_windows = Table(
    "replay_windows",
    metadata,
    Column("device_id", String(64), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("top", BigInteger, nullable=False),
    Column("bitmap", LargeBinary, nullable=False),
    #: Bumped by every save: hub processes compare-and-swap on it (migration 0005).
    Column("version", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("device_id", "epoch"),
)

readings = Table(
    "readings",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("topic", String(256), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("body", LargeBinary, nullable=False),
    # Id of the subject data key sealing ``body`` (ADR 0405); NULL: a clear body from before migration 0311.
    Column("key_id", LargeBinary(16), nullable=True),
    UniqueConstraint("device_id", "epoch", "seq", name="uq_readings_device_epoch_seq"),
)
Index("ix_readings_received", readings.c.received_at)

rejections = Table(
    "rejections",
    metadata,
    # Aggregated per device and reason code; device_id "" when unattributable.
    Column("device_id", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("device_id", "reason"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_id", String(32), primary_key=True),
    Column("token_hash", LargeBinary(32), nullable=False),
    Column("name", String(128), nullable=False),
    Column("role", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

hub_meta = Table(
    "hub_meta",
    metadata,
    # Public hub-wide values shared by every hub process (CA certificate...).
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

revoked_certificates = Table(
    "revoked_certificates",
    metadata,
    # Serials that must stay on the CRL even after the device was re-provisioned.
    Column("serial", String(64), primary_key=True),
    Column("device_id", String(64), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=False),
)

_CORE = [hub_meta, devices, enrollment_tokens, key_epochs, replay_windows, readings, rejections, api_tokens]


def create_core_tables(conn: Connection) -> None:
    """Migration ``0001_core``."""
    for table in _CORE:
        table.create(conn, checkfirst=True)
    for index in readings.indexes:
        index.create(conn, checkfirst=True)


def create_revoked_certificates(conn: Connection) -> None:
    """Migration ``0002_revoked_certificates``."""
    revoked_certificates.create(conn, checkfirst=True)


def add_transport_cert_serial(conn: Connection) -> None:
    """Migration ``0003_transport_cert_serial``: the serial of each device's TLS transport certificate (ADR 0600)."""
    # A database made by 0001 after this column was added already has it.
    if "transport_cert_serial" not in {c["name"] for c in inspect(conn).get_columns("devices")}:
        conn.execute(text("ALTER TABLE devices ADD COLUMN transport_cert_serial VARCHAR(64)"))


def add_replay_window_version(conn: Connection) -> None:
    """Migration ``0005_replay_window_version``: replay windows are saved compare-and-swap on a version."""
    # A database made by 0001 after this column was added already has it.
    if "version" not in {c["name"] for c in inspect(conn).get_columns("replay_windows")}:
        conn.execute(text("ALTER TABLE replay_windows ADD COLUMN version BIGINT NOT NULL DEFAULT 0"))


def add_reading_key_id(conn: Connection) -> None:
    """Migration ``0311_reading_key_id``: readings name the subject data key sealing their body (ADR 0405).

    Existing bodies stay clear (``key_id`` NULL) until the hub's maintenance
    tick, or ``iotguard privacy seal-readings``, encrypts them in place.
    """
    if "key_id" not in {c["name"] for c in inspect(conn).get_columns("readings")}:
        conn.execute(text("ALTER TABLE readings ADD COLUMN key_id " + ("BYTEA" if conn.dialect.name == "postgresql"
                                                                       else "BLOB")))
