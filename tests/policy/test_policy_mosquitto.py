"""Micro-segmentation at a real Mosquitto broker, with ACLs derived from the policies.

Starts /usr/sbin/mosquitto with the production configuration
(:func:`iotguard.hub.mosquitto.write_broker_config`: TLS 1.3, client
certificates from the fleet CA, certificate CN as the username, CRL) and the
``acl_file`` rendered by :func:`render_mosquitto_acl`, then shows that a
device's lateral publish never reaches a subscriber, and that quarantine
(posture change -> regenerated ACL -> SIGHUP) cuts its telemetry while its
attestation channel stays open.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotguard.clock import FixedClock
from iotguard.hub.mosquitto import update_access_files, write_broker_config
from iotguard.hub.store import HubStore
from iotguard.identity.ca import FleetCA
from iotguard.policy import PolicyEngine, default_policy_set, render_mosquitto_acl
from iotguard.tls import client_context
from tests.conftest import free_port, wait_port
from tests.lifecycle.conftest import make_ca
from tests.policy.conftest import NOW, fleet

MOSQUITTO = os.environ.get("IOTGUARD_MOSQUITTO", "/usr/sbin/mosquitto")

pytestmark = pytest.mark.mosquitto


def _require_binaries() -> None:
    if not os.access(MOSQUITTO, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"mosquitto binary missing in CI: {MOSQUITTO}")
        pytest.skip(f"mosquitto binary missing: {MOSQUITTO}")


class _Broker:
    def __init__(self, root: Path, engine: PolicyEngine) -> None:
        self.root = root
        self.engine = engine
        self.port = free_port()
        now = datetime.now(tz=UTC)
        self.store = HubStore.open(f"sqlite:///{root / 'hub.db'}")
        self.ca: FleetCA = make_ca(root / "ca-keys", now=now)
        self.clients = root / "clients"
        self.clients.mkdir()
        for user in ["hub", *(p.device_id for p in engine.posture)]:
            key = Ed25519PrivateKey.generate()
            cert = self.ca.issue_device_certificate(user, key.public_key().public_bytes_raw(), now=now,
                                                    validity=timedelta(days=1))
            key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            (self.clients / f"{user}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem)
        self.files = write_broker_config(root / "broker", self.ca, self.store, "127.0.0.1", self.port, now,
                                         bind_address="127.0.0.1", acl_renderer=self.render_acl)
        self.log = (root / "mosquitto.log").open("wb")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.files.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise RuntimeError("mosquitto did not start: " + (root / "mosquitto.log").read_text()) from None

    def render_acl(self) -> str:
        return render_mosquitto_acl(self.engine, service_accounts={"hub": [("readwrite", "iotguard/#")]}, now=NOW)

    def reload(self) -> None:
        update_access_files(self.files.root, self.ca, self.store, datetime.now(tz=UTC), acl_renderer=self.render_acl)
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.store.engine.dispose()


def _client(broker: _Broker, user: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv311)
    client.tls_set_context(client_context(broker.files.cafile, certfile=broker.clients / f"{user}.pem"))
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(5), f"{user} could not connect"
    return client


@pytest.fixture
def broker() -> Iterator[_Broker]:
    _require_binaries()
    # Not under pytest's tmp dir: it is private to root, and Mosquitto drops to its own user.
    root = Path(tempfile.mkdtemp(prefix="iotguard-policy-mqtt-"))
    root.chmod(0o711)
    engine = PolicyEngine(default_policy_set(), posture=fleet(), clock=FixedClock(NOW))
    b = _Broker(root, engine)
    yield b
    b.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_device_without_certificate_cannot_connect(broker: _Broker) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-a1", protocol=mqtt.MQTTv311)
    client.tls_set_context(client_context(broker.files.cafile))
    client.username_pw_set("dev-a1", "guess")
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else connected.set()
    try:
        client.connect("127.0.0.1", broker.port)
    except (ssl.SSLError, OSError):
        return  # refused in the handshake
    client.loop_start()
    try:
        assert not connected.wait(3), "a client without a certificate was accepted"
    finally:
        client.loop_stop()
        client.disconnect()


def test_lateral_publish_not_delivered_and_quarantine_cuts_telemetry(broker: _Broker) -> None:
    received: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            received.append((msg.topic, msg.payload))

    hub = _client(broker, "hub")
    hub.on_message = on_message
    subscribed = threading.Event()
    hub.on_subscribe = lambda *a: subscribed.set()
    hub.subscribe("iotguard/#", qos=1)
    assert subscribed.wait(5)

    dev = _client(broker, "dev-a1")

    def publish(topic: str, payload: bytes) -> None:
        dev.publish(topic, payload, qos=1).wait_for_publish(5)

    publish("iotguard/plant-a/dev-a1/telemetry", b"own")
    publish("iotguard/plant-b/dev-b1/telemetry", b"lateral-segment")
    publish("iotguard/plant-a/dev-a2/telemetry", b"lateral-peer")
    publish("iotguard/plant-b/dev-a1/telemetry", b"claimed-segment")
    publish("iotguard/plant-a/dev-a1/cmd", b"spoofed-command")
    time.sleep(0.5)
    with lock:
        assert received == [("iotguard/plant-a/dev-a1/telemetry", b"own")]
        received.clear()

    # Quarantine: a posture change, the ACL regenerated from the same policies, the broker reloaded.
    broker.engine.posture.quarantine("dev-a1")
    broker.reload()
    publish("iotguard/plant-a/dev-a1/telemetry", b"after-quarantine")
    publish("iotguard/attest/dev-a1/evidence", b"evidence")
    time.sleep(0.5)
    with lock:
        assert received == [("iotguard/attest/dev-a1/evidence", b"evidence")]

    for c in (dev, hub):
        c.loop_stop()
        c.disconnect()
