"""A production Mosquitto configuration: device mTLS, CRL and per-device ACLs.

:func:`write_broker_config` writes one directory that a stock Mosquitto 2
runs with ``mosquitto -c <dir>/mosquitto.conf``:

- ``mosquitto.conf``: one TLS listener that requires a client certificate
  from the fleet CA, takes the certificate's CN (the device id) as the MQTT
  username, checks the CRL, refuses anonymous clients and enforces TLS 1.3
  (Mosquitto 2.0 with OpenSSL 3 negotiates TLS 1.3 with the fleet's Ed25519
  certificates); persistence and queue limits sized for the hub's
  persistent session.
- ``ca.pem``, ``crl.pem``, ``server.crt`` and ``server.key`` (mode 0600, the
  broker's TLS key; Mosquitto can only read keys from files), and
  ``hub.crt``/``hub.key`` (mode 0600), the hub's own client identity
  ``iotguard-hub``.
- ``acl``: per-device lines from a renderer callable (default:
  :func:`render_registry_acl` over the registry; the Cedar-derived
  :func:`iotguard.policy.acl.render_mosquitto_acl` plugs in the same way).

After a revocation, :func:`update_access_files` rewrites the CRL and the ACL
and :func:`reload` sends ``SIGHUP``: Mosquitto 2.0 re-reads the ACL file
(publishes from the revoked device are denied from then on, on its existing
connection too) and the listener's CRL (new TLS handshakes with the revoked
certificate fail). Every file is replaced atomically so a reload never reads
half a file.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.errors import ConfigError
from iotguard.fileio import atomic_write
from iotguard.hub.store import DeviceRecord, HubStore
from iotguard.identity.ca import FleetCA
from iotguard.identity.crl import issue_crl, issue_server_certificate

__all__ = [
    "DEFAULT_BROKER_USER",
    "DEFAULT_CRL_VALIDITY",
    "HUB_GRANTS",
    "HUB_USERNAME",
    "MAX_QUEUED_MESSAGES",
    "AclRenderer",
    "BrokerFiles",
    "BrokerLimits",
    "hub_queue_size",
    "reload",
    "render_mosquitto_conf",
    "render_registry_acl",
    "revoked_serials",
    "update_access_files",
    "update_acl_file",
    "write_broker_config",
]

log = logging.getLogger(__name__)

#: The hub's MQTT identity (CN of its client certificate, hence its username).
HUB_USERNAME = "iotguard-hub"
#: The hub reads every device's telemetry and media and writes acks and commands.
HUB_GRANTS: tuple[tuple[str, str], ...] = (
    ("read", "iotguard/+/+/telemetry"),
    ("read", "iotguard/+/+/media"),
    ("write", "iotguard/+/+/ack"),
    ("write", "iotguard/+/+/cmd"),
)
#: Validity of each CRL the broker gets. Mosquitto (OpenSSL) refuses every
#: client once the CRL's nextUpdate has passed, so the hub must rewrite it
#: well before (see docs/lifecycle.md); short enough that a stale CRL cannot
#: hide a revocation for long.
DEFAULT_CRL_VALIDITY = timedelta(days=2)
#: Upper bound of the per-client queue, whatever the sizing formula says.
MAX_QUEUED_MESSAGES = 5_000_000
#: Validity of the broker's TLS server certificate and of the hub's client certificate.
DEFAULT_SERVER_CERT_VALIDITY = timedelta(days=90)

#: The unprivileged user Mosquitto drops to when started as root (its own default).
DEFAULT_BROKER_USER = "mosquitto"

#: Returns the full text of the Mosquitto ``acl_file``.
AclRenderer = Callable[[], str]

_TOPIC_UNSAFE = frozenset("+#/\x00")
_ACCESS = frozenset({"read", "write", "readwrite"})


def hub_queue_size(device_count: int, messages_per_device_per_minute: float, outage: timedelta) -> int:
    """Queue length that holds the fleet's telemetry while the hub is away.

    Mosquitto queues QoS 1 messages for the hub's persistent session while
    no hub process is connected; ``max_queued_messages`` must hold a whole
    outage or the broker drops telemetry.

    Args:
        device_count: Devices publishing.
        messages_per_device_per_minute: Mean publish rate per device.
        outage: Longest hub outage to absorb.

    Returns:
        The queue length, at least 1,000 and at most :data:`MAX_QUEUED_MESSAGES`.

    Raises:
        ConfigError: a negative count, rate or outage.
    """
    if device_count < 0 or messages_per_device_per_minute < 0 or outage < timedelta(0):
        raise ConfigError("queue sizing inputs must not be negative")
    needed = int(device_count * messages_per_device_per_minute * outage.total_seconds() / 60) + 1
    return max(1_000, min(needed, MAX_QUEUED_MESSAGES))


@dataclass(frozen=True)
class BrokerLimits:
    """Broker-wide resource limits (all reloaded by Mosquitto on SIGHUP).

    Attributes:
        max_queued_messages: Per-client QoS 1/2 queue (see :func:`hub_queue_size`).
        max_queued_bytes: Per-client queue bytes (0 = no byte limit).
        max_inflight_messages: Unacknowledged QoS 1/2 messages per client. The hub acknowledges a
            message after its batch commits, so this caps the hub's batch: 2,000, the default
            ``hub.batch_max_messages`` (ADR 1505; it was Mosquitto's 20, which made batches of 20).
        max_inflight_bytes: Unacknowledged QoS 1/2 payload bytes per client (0 = no limit): bounds
            what a hub process (or any client) holds in memory unacknowledged whatever the message
            count: 8 MiB is 2,000 readings of up to 4 KiB, or 32 media objects of 256 KiB.
        message_size_limit: Largest accepted PUBLISH payload in bytes.
        persistent_client_expiration: Mosquitto duration after which an
            absent persistent session is dropped (e.g. ``"7d"``).
        max_connections: Simultaneous connections on the listener (-1 = no limit).
        autosave_interval_s: Seconds between persistence writes.
    """

    max_queued_messages: int = 100_000
    max_queued_bytes: int = 0
    max_inflight_messages: int = 2_000
    max_inflight_bytes: int = 8 * 1024 * 1024
    message_size_limit: int = 262_144 + 1_024
    persistent_client_expiration: str = "7d"
    max_connections: int = -1
    autosave_interval_s: int = 60

    def check(self) -> None:
        """Raises:
        ConfigError: a limit out of range.
        """
        if not 1 <= self.max_queued_messages <= MAX_QUEUED_MESSAGES:
            raise ConfigError(f"max_queued_messages must be 1..{MAX_QUEUED_MESSAGES}")
        if self.max_queued_bytes < 0 or not 1 <= self.max_inflight_messages <= 65_535:
            raise ConfigError("max_queued_bytes must be >= 0 and max_inflight_messages 1..65535")
        if self.max_inflight_bytes < 0:
            raise ConfigError("max_inflight_bytes must be >= 0 (0: no byte limit)")
        if not 1 <= self.message_size_limit <= 268_435_455:
            raise ConfigError("message_size_limit must be 1..268435455 (the MQTT maximum)")
        exp = self.persistent_client_expiration
        if len(exp) < 2 or not exp[:-1].isdigit() or exp[-1] not in "hdwmy":
            raise ConfigError("persistent_client_expiration must look like 14d (units h d w m y)")
        if self.max_connections < -1 or self.max_connections == 0 or not 1 <= self.autosave_interval_s <= 86_400:
            raise ConfigError("max_connections must be -1 or positive; autosave_interval_s 1..86400")


@dataclass(frozen=True)
class BrokerFiles:
    """Paths of one generated configuration directory."""

    root: Path
    conf: Path = field(init=False)
    acl: Path = field(init=False)
    cafile: Path = field(init=False)
    crlfile: Path = field(init=False)
    certfile: Path = field(init=False)
    keyfile: Path = field(init=False)
    hub_certfile: Path = field(init=False)
    hub_keyfile: Path = field(init=False)
    pid_file: Path = field(init=False)
    persistence_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        root = self.root.resolve()
        object.__setattr__(self, "root", root)
        for name, rel in (("conf", "mosquitto.conf"), ("acl", "acl"), ("cafile", "ca.pem"),
                          ("crlfile", "crl.pem"), ("certfile", "server.crt"), ("keyfile", "server.key"),
                          ("hub_certfile", "hub.crt"), ("hub_keyfile", "hub.key"),
                          ("pid_file", "mosquitto.pid"), ("persistence_dir", "data")):
            object.__setattr__(self, name, root / rel)


def _check_acl_name(what: str, value: str) -> None:
    if not value or len(value) > 64 or any(c.isspace() or c in _TOPIC_UNSAFE for c in value):
        raise ConfigError(f"{what} {value!r} cannot appear in a Mosquitto ACL")


def render_registry_acl(
    devices: Iterable[DeviceRecord],
    *,
    hub_username: str = HUB_USERNAME,
    hub_grants: Sequence[tuple[str, str]] = HUB_GRANTS,
) -> str:
    """Render the ``acl_file`` from device registry rows.

    Each **active** device may write only ``iotguard/<segment>/<id>/telemetry``
    and ``.../media`` and read its ``ack`` and ``cmd`` topics; pending, revoked and
    decommissioned devices get no lines, so Mosquitto denies them everything.

    Args:
        devices: Registry rows (``HubStore.list_devices()``).
        hub_username: The hub's MQTT identity.
        hub_grants: The hub's ``(access, topic)`` grants (wildcards allowed here only).

    Raises:
        ConfigError: a device id or segment that is unsafe in a topic or an
            ACL line (wildcards, ``/``, whitespace), a device id equal to the
            hub's username, or a bad hub grant.
    """
    _check_acl_name("user", hub_username)
    lines = ["# Generated by iotguard from the device registry; do not edit.", "", f"user {hub_username}"]
    for access, topic in hub_grants:
        if access not in _ACCESS or not topic or any(c.isspace() or c == "\x00" for c in topic):
            raise ConfigError(f"bad hub grant {access!r} {topic!r}")
        lines.append(f"topic {access} {topic}")
    lines.append("")
    for d in sorted(devices, key=lambda d: d.device_id):
        if d.status != "active":
            continue
        _check_acl_name("device id", d.device_id)
        _check_acl_name("segment", d.segment)
        if d.device_id == hub_username:
            raise ConfigError(f"device id {d.device_id!r} collides with the hub's MQTT identity")
        base = f"iotguard/{d.segment}/{d.device_id}"
        lines += [f"user {d.device_id}", f"topic write {base}/telemetry", f"topic write {base}/media",
                  f"topic read {base}/ack",
                  f"topic read {base}/cmd", ""]
    return "\n".join(lines)


def render_mosquitto_conf(
    files: BrokerFiles, *, port: int, bind_address: str | None = None, limits: BrokerLimits | None = None,
    run_as_user: str | None = None,
) -> str:
    """Render ``mosquitto.conf`` for the files in ``files``.

    Raises:
        ConfigError: a port out of range, a bind address or user with
            whitespace, or bad limits.
    """
    limits = limits or BrokerLimits()
    limits.check()
    if not 1 <= port <= 65_535:
        raise ConfigError("port must be 1..65535")
    for what, value in (("bind address", bind_address), ("user", run_as_user)):
        if value is not None and (not value or any(c.isspace() or c == "\x00" for c in value)):
            raise ConfigError(f"bad {what} {value!r}")
    lines = [
        "# Generated by iotguard (iotguard broker config); do not edit, regenerate.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {files.acl}",
        f"pid_file {files.pid_file}",
        *([f"user {run_as_user}"] if run_as_user else []),
        "persistence true",
        f"persistence_location {files.persistence_dir}/",
        f"autosave_interval {limits.autosave_interval_s}",
        f"persistent_client_expiration {limits.persistent_client_expiration}",
        f"max_queued_messages {limits.max_queued_messages}",
        f"max_queued_bytes {limits.max_queued_bytes}",
        f"max_inflight_messages {limits.max_inflight_messages}",
        f"max_inflight_bytes {limits.max_inflight_bytes}",
        f"message_size_limit {limits.message_size_limit}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        "",
        f"listener {port}" + (f" {bind_address}" if bind_address else ""),
        f"max_connections {limits.max_connections}",
        f"cafile {files.cafile}",
        f"certfile {files.certfile}",
        f"keyfile {files.keyfile}",
        f"crlfile {files.crlfile}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.3",
        "",
    ]
    return "\n".join(lines)


def revoked_serials(store: HubStore) -> list[tuple[int, datetime]]:
    """``(serial, revoked_at)`` of every revoked or decommissioned device certificate (operational and transport).

    Raises:
        ConfigError: a stored serial is not hexadecimal.
    """
    out: list[tuple[int, datetime]] = []
    for status in ("revoked", "decommissioned"):
        offset = 0
        while True:
            page = store.list_devices(status=status, limit=1000, offset=offset)
            for d in page:
                # Both certificates of a device: operational and transport (ADR 0600).
                for serial_hex in (d.cert_serial, d.transport_cert_serial):
                    if serial_hex is None:
                        continue
                    try:
                        serial = int(serial_hex, 16)
                    except ValueError:
                        raise ConfigError(f"device {d.device_id!r} has a malformed certificate serial") from None
                    out.append((serial, d.revoked_at or d.enrolled_at or d.created_at))
            if len(page) < 1000:
                break
            offset += 1000
    listed = {s for s, _ in out}
    for serial_hex, revoked_at in store.revoked_certificate_serials():  # re-provisioned devices
        try:
            serial = int(serial_hex, 16)
        except ValueError:
            raise ConfigError("a recorded revoked certificate serial is malformed") from None
        if serial not in listed:
            out.append((serial, revoked_at))
    return out


def _all_devices(store: HubStore) -> list[DeviceRecord]:
    out: list[DeviceRecord] = []
    while True:
        page = store.list_devices(limit=1000, offset=len(out))
        out += page
        if len(page) < 1000:
            return out




@functools.cache
def _warn_no_user(user: str) -> None:
    log.warning("broker user %r does not exist on this host: the broker files keep their owner", user)


def _owner(run_as_user: str | None) -> tuple[int, int] | None:
    # Mosquitto started as root drops to ``run_as_user`` and re-reads the key,
    # CRL and ACL as that user on SIGHUP, so the files must belong to it.
    if run_as_user is None or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(run_as_user)
    except KeyError:
        # No such user here, so no Mosquitto on this host drops to it (it would refuse to start): the files
        # stay the hub's own. Failing instead would leave every access change queued forever.
        _warn_no_user(run_as_user)
        return None
    return entry.pw_uid, entry.pw_gid


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def update_access_files(
    out_dir: str | os.PathLike[str],
    ca: FleetCA,
    store: HubStore,
    now: datetime,
    *,
    acl_renderer: AclRenderer | None = None,
    crl_validity: timedelta = DEFAULT_CRL_VALIDITY,
    run_as_user: str | None = DEFAULT_BROKER_USER,
) -> BrokerFiles:
    """Rewrite the CRL and the ACL (after a revocation, and on a schedule).

    Call :func:`reload` afterwards. Run at least every ``crl_validity / 2``:
    an expired CRL makes Mosquitto refuse every client.

    Raises:
        ConfigError: bad registry rows for an ACL, unsafe renderer output, or
            a bad ``crl_validity``.
    """
    files = BrokerFiles(Path(out_dir))
    owner = _owner(run_as_user)
    acl_text = acl_renderer() if acl_renderer is not None else render_registry_acl(_all_devices(store))
    if "\x00" in acl_text:
        raise ConfigError("ACL text contains NUL")
    crl = issue_crl(ca, revoked_serials(store), now=now, next_update=now + crl_validity)
    atomic_write(files.crlfile, crl, mode=0o644, owner=owner)
    atomic_write(files.acl, acl_text.encode(), mode=0o644, owner=owner)
    return files


def update_acl_file(out_dir: str | os.PathLike[str], acl_text: str, *,
                    run_as_user: str | None = DEFAULT_BROKER_USER) -> BrokerFiles:
    """Rewrite only the ACL (a posture change: quarantine, release; the CRL is unchanged). Call :func:`reload`.

    Raises:
        ConfigError: the ACL text contains NUL.
    """
    files = BrokerFiles(Path(out_dir))
    if "\x00" in acl_text:
        raise ConfigError("ACL text contains NUL")
    atomic_write(files.acl, acl_text.encode(), mode=0o644, owner=_owner(run_as_user))
    return files


def write_broker_config(
    out_dir: str | os.PathLike[str],
    ca: FleetCA,
    store: HubStore,
    hostname: str,
    port: int,
    now: datetime,
    *,
    acl_renderer: AclRenderer | None = None,
    bind_address: str | None = None,
    limits: BrokerLimits | None = None,
    run_as_user: str | None = DEFAULT_BROKER_USER,
    server_cert_validity: timedelta = DEFAULT_SERVER_CERT_VALIDITY,
    crl_validity: timedelta = DEFAULT_CRL_VALIDITY,
    extra_names: Sequence[str] = (),
) -> BrokerFiles:
    """Write a complete Mosquitto configuration directory.

    Generates a fresh broker TLS key (and the hub's client key) with
    ``cryptography`` on every call, so re-running the command rotates them;
    private keys go only to their 0600 files and are never logged.

    Args:
        out_dir: Directory to write (created 0700 if missing).
        ca: The fleet CA (issues the server and hub certificates, signs the CRL).
        store: The hub store (registry rows for the ACL and the CRL).
        hostname: Name devices connect to (server certificate SAN).
        port: TLS listener port.
        now: Issue time.
        acl_renderer: Returns the ACL text; default :func:`render_registry_acl`.
        bind_address: Listener address (default: all interfaces).
        limits: Queue and size limits (default :class:`BrokerLimits`).
        run_as_user: Unprivileged user Mosquitto drops to when started as
            root; files are chowned to it when this runs as root.
        server_cert_validity: Validity of the server and hub certificates.
        crl_validity: Validity of the CRL.
        extra_names: More SAN host names or addresses for the server certificate.

    Returns:
        The paths written.

    Raises:
        ConfigError: bad host name, port, limits, user or registry rows.
        IntegrityError: a certificate or CRL does not verify under the CA.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = BrokerFiles(root)
    owner = _owner(run_as_user)
    conf = render_mosquitto_conf(files, port=port, bind_address=bind_address, limits=limits,
                                 run_as_user=run_as_user)
    files.persistence_dir.mkdir(exist_ok=True, mode=0o700)
    if owner is not None:
        os.chown(files.persistence_dir, *owner)
        os.chown(files.root, *owner)
    server_key = Ed25519PrivateKey.generate()
    server_cert = issue_server_certificate(ca, hostname, server_key.public_key(), now, server_cert_validity,
                                           extra_names=extra_names)
    hub_key = Ed25519PrivateKey.generate()
    hub_cert = ca.issue_device_certificate(HUB_USERNAME, hub_key.public_key().public_bytes_raw(), now=now,
                                           validity=server_cert_validity, segment="hub")
    pem = serialization.Encoding.PEM
    atomic_write(files.cafile, ca.certificate_pem, mode=0o644, owner=owner)
    atomic_write(files.keyfile, _private_pem(server_key), mode=0o600, owner=owner)
    atomic_write(files.certfile, server_cert.public_bytes(pem), mode=0o644, owner=owner)
    # The hub's client key belongs to the hub process, not to the broker.
    atomic_write(files.hub_keyfile, _private_pem(hub_key), mode=0o600, owner=None)
    atomic_write(files.hub_certfile, hub_cert.public_bytes(pem), mode=0o644, owner=None)
    update_access_files(root, ca, store, now, acl_renderer=acl_renderer, crl_validity=crl_validity,
                        run_as_user=run_as_user)
    atomic_write(files.conf, conf.encode(), mode=0o644, owner=owner)
    return files


def reload(pid_or_pidfile: int | str | os.PathLike[str]) -> int:
    """Send ``SIGHUP`` to Mosquitto so it re-reads the ACL, CRL and certificates.

    Args:
        pid_or_pidfile: The broker's process id, or the path of its pid file.

    Returns:
        The process id signalled.

    Raises:
        ConfigError: unreadable or malformed pid file, a pid below 2, or no
            such process (the broker is not running; nothing was reloaded).
    """
    if isinstance(pid_or_pidfile, int):
        pid = pid_or_pidfile
    else:
        try:
            text = Path(pid_or_pidfile).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read broker pid file: {exc}") from None
        if not text.isdigit() or len(text) > 10:
            raise ConfigError("broker pid file does not hold a process id")
        pid = int(text)
    if pid < 2:
        raise ConfigError("refusing to signal process id < 2")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ConfigError(f"no broker process {pid}; the configuration was not reloaded") from None
    except PermissionError:
        raise ConfigError(f"not allowed to signal broker process {pid}") from None
    return pid
