"""Micro-segmentation at a real Mosquitto broker, with ACLs derived from the policies.

Starts /usr/sbin/mosquitto on a free localhost port with a password file and
the ``acl_file`` rendered by :func:`render_mosquitto_acl`, then shows that a
device's lateral publish never reaches a subscriber, and that quarantine
(posture change -> regenerated ACL -> SIGHUP) cuts its telemetry while its
attestation channel stays open.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from iotguard.clock import FixedClock
from iotguard.policy import PolicyEngine, default_policy_set, render_mosquitto_acl
from tests.policy.conftest import NOW, fleet

MOSQUITTO = os.environ.get("IOTGUARD_MOSQUITTO", "/usr/sbin/mosquitto")
PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

pytestmark = pytest.mark.mosquitto


def _require_binaries() -> None:
    missing = [b for b in (MOSQUITTO, PASSWD) if not os.access(b, os.X_OK)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"mosquitto binaries missing in CI: {missing}")
        pytest.skip(f"mosquitto binaries missing: {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Broker:
    def __init__(self, root: Path, engine: PolicyEngine) -> None:
        self.root = root
        self.engine = engine
        self.port = _free_port()
        self.acl = root / "acl"
        self.passwords = root / "passwd"
        self.passwords.touch(mode=0o600)
        for user in ["hub", *(p.device_id for p in engine.posture)]:
            subprocess.run([PASSWD, "-b", str(self.passwords), user, f"pw-{user}"], check=True)
        self.write_acl()
        conf = root / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {self.passwords}\n"
            f"acl_file {self.acl}\n"
            "persistence false\n"
            "user root\n"
            "log_dest stderr\n"
        )
        self.log = (root / "mosquitto.log").open("wb")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not start: " + (root / "mosquitto.log").read_text())

    def write_acl(self) -> None:
        text = render_mosquitto_acl(
            self.engine, service_accounts={"hub": [("readwrite", "iotguard/#")]}, now=NOW
        )
        self.acl.write_text(text)
        self.acl.chmod(0o600)

    def reload(self) -> None:
        self.write_acl()
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


def _client(broker: _Broker, user: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, f"pw-{user}")
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(5), f"{user} could not connect"
    return client


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[_Broker]:
    _require_binaries()
    engine = PolicyEngine(default_policy_set(), posture=fleet(), clock=FixedClock(NOW))
    b = _Broker(tmp_path, engine)
    yield b
    b.stop()


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
