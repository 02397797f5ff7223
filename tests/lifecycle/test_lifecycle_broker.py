"""A real Mosquitto running the production configuration from ``iotguard.hub.mosquitto``.

One broker per module: device mTLS with certificates from the fleet CA
(identity as username), per-device ACLs from the registry, the CRL, and
revocation pushed with SIGHUP while the revoked device keeps publishing.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.hub.mosquitto import BrokerFiles, reload, update_access_files, write_broker_config
from iotguard.hub.store import HubStore
from iotguard.identity.ca import FleetCA
from tests.conftest import MOSQUITTO, free_port, wait_port
from tests.lifecycle.conftest import make_ca, register_device

pytestmark = pytest.mark.mosquitto

#: Bound on revocation at the broker: revoke -> CRL + ACL rewritten -> SIGHUP -> publishes dropped.
REVOCATION_BOUND_S = 5.0
CONNECT_TIMEOUT_S = 3.0


@dataclass
class Fleet:
    files: BrokerFiles
    port: int
    ca: FleetCA
    store: HubStore
    keys: Path
    proc: subprocess.Popen[bytes]
    log: Path
    now: datetime
    certs: dict[str, int] = field(default_factory=dict)

    def creds(self, name: str) -> tuple[str, str]:
        return str(self.keys / f"{name}.crt"), str(self.keys / f"{name}.key")


def _write_device_tls(keys: Path, name: str, ca: FleetCA, store: HubStore | None, now: datetime) -> int:
    """A device's TLS transport key (a file, as Mosquitto clients need) certified by ``ca``."""
    key = Ed25519PrivateKey.generate()
    (keys / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub = key.public_key().public_bytes_raw()
    if store is not None:
        cert = register_device(store, ca, name, now=now, public_key=pub)
    else:
        cert = ca.issue_device_certificate(name, pub, now=now, validity=timedelta(days=1), segment="plant1")
    (keys / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.serial_number


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    if not Path(MOSQUITTO).exists():
        if os.environ.get("CI"):
            pytest.fail("mosquitto is required in CI")
        pytest.skip("mosquitto not installed")
    # Not under pytest's tmp dir: it is private to root, and Mosquitto started
    # as root drops to its own user before it re-reads files on SIGHUP.
    base = Path(tempfile.mkdtemp(prefix="iotguard-mqtt-"))
    base.chmod(0o711)
    now = datetime.now(tz=UTC)
    store = HubStore.open(f"sqlite:///{base / 'hub.db'}")
    ca = make_ca(base / "ca-keys", now=now)
    keys = base / "clients"
    keys.mkdir()
    certs = {name: _write_device_tls(keys, name, ca, store, now) for name in ("dev-a", "dev-b", "dev-c")}
    other_ca = make_ca(base / "other-ca-keys", name="attacker CA", now=now)
    _write_device_tls(keys, "forged-dev-a", other_ca, None, now)
    port = free_port()
    files = write_broker_config(base / "broker", ca, store, "127.0.0.1", port, now)
    log = base / "mosquitto.log"
    with log.open("wb") as log_f:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(files.conf)], stdout=log_f, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        yield Fleet(files, port, ca, store, keys, proc, log, now, certs)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        store.engine.dispose()
        shutil.rmtree(base, ignore_errors=True)


class _Client:
    """A paho client that records its CONNACK, disconnects and messages."""

    def __init__(self, fleet: Fleet, client_id: str, certfile: str | None, keyfile: str | None, *,
                 username: str | None = None, password: str | None = None, use_tls: bool = True) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if use_tls:
            self.c.tls_set(ca_certs=str(fleet.files.cafile), certfile=certfile, keyfile=keyfile)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.connected = threading.Event()
        self.done = threading.Event()
        self.messages: list[tuple[str, bytes, float]] = []
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_: self.done.set()
        self.c.on_connect_fail = lambda *_: self.done.set()
        self.c.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload, time.monotonic()))
        self.fleet = fleet

    def _on_connect(self, _c: object, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object) -> None:
        if not rc.is_failure:
            self.connected.set()
        self.done.set()

    def connect(self) -> bool:
        try:
            self.c.connect("127.0.0.1", self.fleet.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self.c.loop_start()
        self.done.wait(CONNECT_TIMEOUT_S)
        return self.connected.is_set()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _device(fleet: Fleet, name: str, client_id: str | None = None) -> _Client:
    crt, key = fleet.creds(name)
    return _Client(fleet, client_id or f"cid-{name}", crt, key)


@pytest.fixture(scope="module")
def hub(fleet: Fleet) -> Iterator[_Client]:
    client = _Client(fleet, "hub-0", str(fleet.files.hub_certfile), str(fleet.files.hub_keyfile))
    assert client.connect(), "the hub's own client certificate must be accepted"
    subscribed = threading.Event()
    client.c.on_subscribe = lambda *_: subscribed.set()
    client.c.subscribe("iotguard/+/+/telemetry", qos=1)
    assert subscribed.wait(CONNECT_TIMEOUT_S)
    yield client
    client.close()


def _wait_for(pred: object, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_device_with_fleet_certificate_connects_as_its_identity(fleet: Fleet, hub: _Client) -> None:
    dev = _device(fleet, "dev-a", client_id="some-random-client-id")
    assert dev.connect()
    try:
        dev.c.publish("iotguard/plant1/dev-a/telemetry", b"reading-1", qos=1).wait_for_publish(3)
        assert _wait_for(lambda: any(m[1] == b"reading-1" for m in hub.messages))
        # The username Mosquitto authorises is the certificate's CN, not the client id.
        assert "u'dev-a'" in fleet.log.read_text(errors="replace")
    finally:
        dev.close()


def test_tls13_only_listener(fleet: Fleet) -> None:
    crt, key = fleet.creds("dev-b")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(fleet.files.cafile))
    ctx.load_cert_chain(crt, key)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls12")
    client.tls_set_context(ctx)
    with pytest.raises((ssl.SSLError, OSError)):
        client.connect("127.0.0.1", fleet.port)


def test_client_without_certificate_is_refused(fleet: Fleet) -> None:
    assert not _Client(fleet, "no-cert", None, None).connect()


def test_certificate_from_another_ca_is_refused(fleet: Fleet) -> None:
    """Check for a cloned identity: a cert naming dev-a but issued by another CA."""
    assert not _device(fleet, "forged-dev-a").connect()


def test_default_credential_guessing_gets_nothing(fleet: Fleet) -> None:
    """Check for default-credential guessing: no anonymous or user/password login exists."""
    for user, password in [("admin", "admin"), ("mosquitto", "mosquitto"), ("iotguard-hub", ""), ("root", "root")]:
        assert not _Client(fleet, f"guess-{user}", None, None, username=user, password=password).connect()
        assert not _Client(fleet, f"plain-{user}", None, None, username=user, password=password,
                           use_tls=False).connect()


def test_lateral_publish_to_another_devices_topic_is_dropped(fleet: Fleet, hub: _Client) -> None:
    """Check for a lateral publish: dev-a writes into dev-b's telemetry topic."""
    crt, key = fleet.creds("dev-a")
    # Claiming the hub's username in CONNECT changes nothing: the identity is the certificate's CN.
    dev = _Client(fleet, "cid-lateral", crt, key, username="iotguard-hub", password="guess")
    assert dev.connect()
    try:
        dev.c.publish("iotguard/plant1/dev-b/telemetry", b"spoofed", qos=1).wait_for_publish(3)
        dev.c.publish("iotguard/plant1/dev-a/ack", b"fake-ack", qos=1).wait_for_publish(3)
        dev.c.publish("iotguard/plant1/dev-a/telemetry", b"marker", qos=1).wait_for_publish(3)
        assert _wait_for(lambda: any(m[1] == b"marker" for m in hub.messages))
        assert not any(m[1] == b"spoofed" for m in hub.messages)
        assert re.search(r"as cid-lateral \(.*u'dev-a'\)", fleet.log.read_text(errors="replace"))
    finally:
        dev.close()


def test_revoked_device_still_publishing_is_cut_off(fleet: Fleet, hub: _Client) -> None:
    """Check for a revoked device that keeps publishing on its open connection."""
    dev = _device(fleet, "dev-c")
    assert dev.connect()
    stop = threading.Event()

    def publish_forever() -> None:
        i = 0
        while not stop.is_set():
            dev.c.publish("iotguard/plant1/dev-c/telemetry", f"c-{i}".encode(), qos=0)
            i += 1
            time.sleep(0.01)

    publisher = threading.Thread(target=publish_forever, daemon=True)
    publisher.start()
    try:
        assert _wait_for(lambda: sum(m[0].endswith("/dev-c/telemetry") for m in hub.messages) > 5)
        t0 = time.monotonic()
        fleet.store.revoke_device("dev-c", now=datetime.now(tz=UTC))
        update_access_files(fleet.files.root, fleet.ca, fleet.store, datetime.now(tz=UTC))
        assert reload(fleet.files.pid_file) == fleet.proc.pid
        # Wait for a quiet period, then measure when the last dev-c message arrived.
        deadline = t0 + REVOCATION_BOUND_S + 2
        while time.monotonic() < deadline:
            last = max(m[2] for m in hub.messages if m[0].endswith("/dev-c/telemetry"))
            if time.monotonic() - last > 1.0:
                break
            time.sleep(0.05)
        last = max(m[2] for m in hub.messages if m[0].endswith("/dev-c/telemetry"))
        cut_off_after = max(0.0, last - t0)
        print(f"revocation at broker: last delivery {cut_off_after * 1000:.0f} ms after revoke")
        assert cut_off_after < REVOCATION_BOUND_S
        assert dev.c.is_connected() and publisher.is_alive(), "the device was still publishing"
    finally:
        stop.set()
        publisher.join(2)
        dev.close()
    # The CRL is re-read on SIGHUP: a new handshake with the revoked certificate fails,
    assert not _device(fleet, "dev-c", client_id="dev-c-again").connect()
    # while a device in good standing still connects after the reload.
    other = _device(fleet, "dev-b")
    assert other.connect()
    other.close()
