"""The throwaway servers a soak runs against: PostgreSQL, Mosquitto and one ``iotguard hub`` process.

Everything listens on 127.0.0.1 only and lives under one work directory the
caller removes. Mosquitto gets the production configuration
(:func:`iotguard.hub.mosquitto.write_broker_config`: mTLS, CRL, the
Cedar-derived ACL) plus one publisher certificate with a write grant on every
device's telemetry topic, over which the simulated devices are multiplexed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess  # nosec B404
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from iotguard.errors import ConfigError
from iotguard.hub.broker import BrokerAddress
from iotguard.hub.compose import HubServices
from iotguard.hub.mosquitto import BrokerLimits, write_broker_config
from iotguard.hub.tls import HubTls
from iotguard.tls import client_context

__all__ = ["PUBLISHER", "Postgres", "PublisherTls", "free_port", "mqtt_client", "publisher_tls", "start_hub",
           "start_mosquitto", "start_postgres"]

#: The soak's publisher identity: one certificate publishing every simulated device's telemetry.
PUBLISHER = "soak-publisher"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], *, check: bool = True) -> None:
    """Run one of our fixed server commands (argv built here, never from input)."""
    subprocess.run(argv, check=check, capture_output=True)  # noqa: S603  # nosec


def _pg_bin() -> Path:
    return Path(os.environ.get("IOTGUARD_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass(frozen=True)
class Postgres:
    """A throwaway PostgreSQL cluster."""

    base: Path
    port: int
    prefix: tuple[str, ...]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/hub"

    def stop(self) -> None:
        _run([*self.prefix, str(_pg_bin() / "pg_ctl"), "-D", str(self.base / "data"), "-m", "fast", "stop"],
             check=False)


def start_postgres(base: Path) -> Postgres:
    """initdb + start + createdb ``hub`` (as user postgres when run as root).

    Raises:
        ConfigError: PostgreSQL is not installed (``IOTGUARD_PG_BIN``).
    """
    if not (_pg_bin() / "initdb").exists():
        raise ConfigError(f"PostgreSQL not found in {_pg_bin()} (set IOTGUARD_PG_BIN)")
    prefix: tuple[str, ...] = ()
    base.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        prefix = ("runuser", "-u", "postgres", "--")
    port = free_port()
    _run([*prefix, str(_pg_bin() / "initdb"), "-D", str(base / "data"), "-U", "postgres", "--auth=trust", "-N"])
    _run([*prefix, str(_pg_bin() / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "log"), "-w",
          "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100", "start"])
    _run([*prefix, str(_pg_bin() / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "hub"])
    return Postgres(base, port, prefix)


@dataclass(frozen=True)
class PublisherTls:
    """Credential files: the fleet CA and the publisher's certificate + key."""

    ca: str
    publisher: str


def publisher_tls(core: HubServices, tmp: Path, *, name: str = PUBLISHER, segment: str = "soak") -> PublisherTls:
    """Issue the publisher's certificate (``name``, in ``segment``) from the hub's fleet CA (the hub's own TLS
    files too); ``bench/ingest.py`` uses it with its own publisher name."""
    now = core.clock.now()
    hub_tls = HubTls(Path(core.cfg.data_dir), core.lifecycle.ca)
    hub_tls.ensure(now)
    key = Ed25519PrivateKey.generate()
    cert = core.lifecycle.ca.issue_device_certificate(name, key.public_key().public_bytes_raw(), now=now,
                                                     validity=timedelta(days=1), segment=segment)
    pem = tmp / "publisher.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pem.chmod(0o600)
    return PublisherTls(str(hub_tls.ca_file), str(pem))


def start_mosquitto(tmp: Path, core: HubServices, limits: BrokerLimits) -> tuple[subprocess.Popen[bytes],
                                                                                  BrokerAddress]:
    """Mosquitto with the production configuration plus the publisher's grant.

    Raises:
        ConfigError: mosquitto is not installed.
    """
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise ConfigError("mosquitto is not installed")
    port = free_port()

    def acl() -> str:
        return core.posture.broker_acl() + f"\nuser {PUBLISHER}\ntopic write iotguard/+/+/telemetry\n"

    files = write_broker_config(tmp / "mosquitto", core.lifecycle.ca, core.store, "127.0.0.1", port,
                                core.clock.now(), bind_address="127.0.0.1", limits=limits, acl_renderer=acl)
    proc = subprocess.Popen([exe, "-c", str(files.conf)],  # noqa: S603  # nosec
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, BrokerAddress("127.0.0.1", port, tls=True)


def mqtt_client(client_id: str, tls: PublisherTls) -> mqtt.Client:
    """An MQTT 3.1.1 client with the publisher's certificate."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    c.tls_set_context(client_context(tls.ca, certfile=tls.publisher))
    return c


def start_hub(data_dir: str, database_url: str, broker: BrokerAddress, log_path: Path,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """One ``python -m iotguard hub`` process configured by the environment only."""
    env = {**os.environ, "IOTGUARD_HUB__DATA_DIR": data_dir, "IOTGUARD_HUB__DATABASE_URL": database_url,
           "IOTGUARD_HUB__BROKER_URL": f"mqtts://{broker.host}:{broker.port}",
           "IOTGUARD_HUB__API_BIND": f"127.0.0.1:{free_port()}",
           "IOTGUARD_CONFIG": str(log_path.parent / "none.toml"), **(extra_env or {})}
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "iotguard", "hub"], env=env, stdout=log,  # nosec
                                stderr=subprocess.STDOUT)
